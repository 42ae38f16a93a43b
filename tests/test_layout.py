"""The package's layout: layers that import one way, one job per module, the report's faces on top."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "denoising_vae"
# Lower modules first: a module may import only modules before it (and its own package's __init__).
ORDER = (
    "core.constants", "core.checks", "core.stopping", "core.files", "core.caches", "core.runtime",
    "data.strokes", "data.synthetic", "data.idx", "data.download", "data.noise", "data.sources",
    "models.losses", "models.fused", "models.fast_path", "models.vae",
    "training.inputs", "training.loop", "training.step_timing", "evaluation", "baselines", "latent",
    "plots", "sweep_plots",
    "study.config", "study.messages", "study.resources", "study.run_folder", "study.yardstick", "study.one_model", "study.cluster",
    "study.figures", "study.report", "study.study", "study.sweep", "study.cli",
)
FACES = ("assignment_5", "data_prepro", "models", "plots")


def module_files():
    """Every module of the package as (dotted name below denoising_vae, path)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(parts), path


def imported_modules(name, path):
    """The package's modules that ``name`` imports, as dotted names below denoising_vae (subpackages
    imported whole count as their ``__init__``), and the top-level names it imports absolutely."""
    package = name.split(".")[:-1]  # the subpackage holding the module (``data.__init__`` too)
    found, absolute = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                absolute.add(alias.name.split(".")[0])
                if alias.name.startswith("denoising_vae."):
                    found.add(alias.name.removeprefix("denoising_vae."))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                absolute.add((node.module or "").split(".")[0])
                if not (node.module or "").startswith("denoising_vae"):
                    continue
                base = node.module.split(".")[1:]
            else:
                base = (package[:len(package) - node.level + 1] if node.level > 1 else package) + \
                    (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join(base + [alias.name])
                found.add(candidate if candidate in ORDER else ".".join(base))
    return {module for module in found if module}, absolute


MODULES = dict(module_files())


def test_every_module_has_a_place_in_the_order():
    plain = {name for name in MODULES if not name.endswith("__init__") and name != "__main__"}
    assert plain == set(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_imports_go_one_way(name):
    imported, _ = imported_modules(name, MODULES[name])
    below = set(ORDER[:ORDER.index(name)])
    packages_below = {module.split(".")[0] for module in below}
    allowed = below | packages_below
    assert imported <= allowed, f"{name} imports {imported - allowed}"


def test_training_and_evaluation_do_not_import_each_other():
    assert not any(m.startswith("training") for m in imported_modules("evaluation", MODULES["evaluation"])[0])
    for name in ("training.inputs", "training.loop", "training.step_timing"):
        assert "evaluation" not in imported_modules(name, MODULES[name])[0]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_package_never_imports_the_faces(name):
    _, absolute = imported_modules(name, MODULES[name])
    assert not absolute & set(FACES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_opens_with_a_docstring_of_its_job(name):
    docstring = ast.get_docstring(ast.parse(MODULES[name].read_text()))
    assert docstring and (len(docstring.splitlines()) >= 3 or name.endswith("__main__"))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_longer_than_450_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= 450


def test_importing_the_package_changes_nothing_in_the_process():
    # Every layer imported, TensorFlow's included: no environment variable, warning format or log filter changes.
    code = """
import logging, os, warnings
before = (dict(os.environ), warnings.formatwarning, [list(logging.getLogger(n).filters) for n in ("distributed.worker", "")])
import denoising_vae.core.runtime, denoising_vae.data, denoising_vae.models, denoising_vae.training
import denoising_vae.evaluation, denoising_vae.plots, denoising_vae.study.cli, denoising_vae.study.sweep
import data_prepro, models, plots, assignment_5
after = (dict(os.environ), warnings.formatwarning, [list(logging.getLogger(n).filters) for n in ("distributed.worker", "")])
changed = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))
assert not changed, changed
assert before[1:] == after[1:]
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_faces_offer_the_reports_names():
    code = """
import data_prepro, models, plots
assert data_prepro.Input_read is data_prepro.input_read and data_prepro.Noise_addition is data_prepro.noise_addition
assert plots.Plot1 is plots.plot_learning_curves and plots.Plot2 is plots.plot_reconstructions
assert plots.Plot3 is plots.plot_latent_sweep
for report_name, architecture, total in (("Architecture_1_Variation_AE", "arch1", 337_244),
                                         ("Architecture_2_Variation_AE", "arch2", 807_700),
                                         ("Architecture_3_Variation_AE", "arch3", 5_285),
                                         ("Architecture_1_VAE", "ae", 336_458)):
    model = getattr(models, report_name)()
    assert model.architecture == architecture and models.parameter_counts(model)["total"] == total
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_package_imports_from_another_folder(tmp_path):
    code = "import denoising_vae, denoising_vae.data as d; print(denoising_vae.__version__, d.input_read.__name__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[1] == "input_read"


def test_the_readme_is_short_and_every_file_it_links_exists():
    import re

    readme = (REPO / "README.md").read_text()
    assert len(readme) <= 20_000
    links = re.findall(r"\]\(((?!https?:)[^)#]+)\)", readme)
    assert links and [link for link in links if not (REPO / link).exists()] == []


def test_the_three_commands_are_one_command_line(tmp_path):
    # python assignment_5.py, denoising-vae and python -m denoising_vae: the same flags and defaults,
    # each naming itself; run from another folder, as an installed command is.
    commands = {"assignment_5.py": [sys.executable, str(REPO / "assignment_5.py")],
                "denoising-vae": [str(Path(sys.executable).parent / "denoising-vae")],
                "python -m denoising_vae": [sys.executable, "-m", "denoising_vae"]}
    helps = {}
    for name, command in commands.items():
        done = subprocess.run(command + ["--help"], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        helps[name] = " ".join(done.stdout.replace(name, "PROGRAM").split())
        bad = subprocess.run(command + ["--epochs", "0"], cwd=tmp_path, capture_output=True, text=True)
        assert bad.returncode == 2
        assert bad.stderr == f"{name}: error: argument --epochs: expected an integer >= 1, got 0 (see --help)\n"
    assert len(set(helps.values())) == 1
