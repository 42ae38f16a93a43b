"""The package's layout: each module states its job, and imports go one way."""
import ast

import pytest

from conftest import REPO

# Lower modules first: a module may import only modules before it.
ORDER = ("atomic_files", "letter_strokes", "synthetic_letters", "data_prepro", "fastpath", "models", "training",
         "evaluation", "plots", "startup", "sweep", "assignment_5")


def project_imports(name):
    tree = ast.parse((REPO / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    return found & set(ORDER)


@pytest.mark.parametrize("name", ORDER)
def test_imports_go_one_way(name):
    below = set(ORDER[:ORDER.index(name)])
    assert project_imports(name) <= below, f"{name} imports {project_imports(name) - below}"


def test_training_and_evaluation_do_not_import_each_other():
    assert "evaluation" not in project_imports("training")
    assert "training" not in project_imports("evaluation")


@pytest.mark.parametrize("name", ORDER)
def test_each_module_opens_with_a_docstring(name):
    docstring = ast.get_docstring(ast.parse((REPO / f"{name}.py").read_text()))
    assert docstring and len(docstring.splitlines()) >= 3
