"""atomic_files: a write either replaces the file whole or leaves it as it was."""
import json

import pytest

from denoising_vae.core import files as atomic_files


def test_write_json_round_trips_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "new" / "results.json"  # the folder is created
    atomic_files.write_json(path, {"loss": 261.0, "models": ["arch2"]})
    assert json.loads(path.read_text()) == {"loss": 261.0, "models": ["arch2"]}
    atomic_files.write_json(path, {"loss": 250.5})
    assert json.loads(path.read_text()) == {"loss": 250.5}
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n1,300.0\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_files.replacing(path) as partial:
            partial.write_text("epoch,lo")
            raise RuntimeError("killed while writing")
    assert path.read_text() == "epoch,loss\n1,300.0\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_the_temporary_name_keeps_the_suffix_and_names_the_process(tmp_path):
    import os

    with atomic_files.replacing(tmp_path / "arch2.keras", suffix=".keras") as partial:
        assert partial.name.endswith(".keras") and str(os.getpid()) in partial.name
        assert partial.parent == tmp_path
        partial.write_bytes(b"weights")
    assert (tmp_path / "arch2.keras").read_bytes() == b"weights"


def test_the_temporary_files_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    left = [tmp_path / ".results.json.4242.part", tmp_path / ".comparison.png.9.part.png",
            tmp_path / "checkpoints" / "arch2" / ".checkpoint-epoch1.keras.77.part.keras",
            tmp_path / "cells" / "ae-seed0" / ".cell.json.5.part"]
    kept = [tmp_path / "results.json", tmp_path / ".lock", tmp_path / "notes.part", tmp_path / ".draft.part",
            tmp_path / "cells" / "ae-seed0" / "history.csv"]
    for path in left + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    assert atomic_files.remove_partial_files(tmp_path) == sorted(left)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
