"""results_logger: atomic writes leave files with the mode the user's umask gives."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from results_logger import atomic_torch_save, atomic_write_text, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_respect_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.csv", "x\n")
    write_json(tmp_path / "a.json", {"x": 1})
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "a.pt")
    atomic_write_text(tmp_path / "a.csv", "y\n")  # a rewrite too
    for name in ("a.csv", "a.json", "a.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.json", "a.pt"]  # no temporary left


def test_a_stricter_umask_is_kept(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.csv", "x\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private.csv").stat().st_mode) == 0o600
