"""results_logger: atomic writes leave files with the mode the user's umask gives."""
from __future__ import annotations

import os
import stat
from pathlib import Path

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


def _pythons() -> list[str]:
    """This interpreter and every Python 3.10 to 3.13 that pyenv has here."""
    import glob
    import sys
    found = [sys.executable] + sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.1[0-3].*/bin/python3")))
    return list(dict.fromkeys(found))


def test_the_code_fingerprint_is_the_same_under_every_python_here_and_imports_no_torch():
    import subprocess
    root = Path(__file__).resolve().parents[1]
    code = "import sys, results_logger as r; print(r.code_fingerprint(), 'torch' in sys.modules)"
    seen = {py: subprocess.run([py, "-c", code], cwd=root, capture_output=True, text=True, timeout=60).stdout.split()
            for py in _pythons()}
    assert all(out[1:] == ["False"] for out in seen.values()), seen
    assert len({out[0] for out in seen.values()}) == 1, seen


def test_the_fingerprint_ignores_comments_docstrings_and_blank_lines_but_not_code():
    from results_logger import code_only
    src = 'def f(x):\n    """Doc, with a # inside."""\n\n    return x + 1  # why\n'
    same = '# a comment\ndef f(x):\n    """Another doc."""\n    return x + 1\n'
    other = 'def f(x):\n    """Doc."""\n    return x + 2\n'
    assert code_only(src) == code_only(same) == "def f(x):\n    return x + 1"
    assert code_only(other) != code_only(src)
    assert code_only('s = "# not a comment"  # a comment\n') == 's = "# not a comment"'
