"""What the scripts' command lines share: one-line usage errors and the output-folder check."""
from __future__ import annotations

import argparse
import os
import re
import tempfile
import warnings
from pathlib import Path


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line that points at ``--help`` (exit 2),
    instead of the usage block (15-23 lines for these scripts) followed by the message."""

    def error(self, message: str):
        one_line = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {one_line}; see {self.prog} --help\n")


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` made absolute, or its nearest ancestor that exists."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def unwritable_folder(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot serve as an output folder (it, or the nearest part of it that exists,
    is a file or cannot be written), or None when it can. Leaves nothing behind (a probe file in
    the nearest existing folder is deleted at once)."""
    probe = nearest_existing(path)
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} cannot be written (permission denied)"
    try:  # root passes os.access everywhere, even where nothing can be created (/proc, a read-only mount)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        return f"{probe} cannot be written ({e.strerror or e})"
    return None


def unwritable_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be written as a file (it is a folder, or its folder cannot be made or
    written), or None when it can; its missing folders are made when it is written."""
    target = Path(path).absolute()
    return f"{target} is a folder" if target.is_dir() else unwritable_folder(target.parent)


def one_line_warnings() -> None:
    """Print a warning from the command line as one line, ``warning: <message>``, not with the
    library's file, line and source."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


def unique(values) -> list:
    """``values`` in their order, each once: a repeated seed or model is one, not two copies of its runs."""
    return list(dict.fromkeys(values))


def plain_text(doc: str) -> str:
    """A docstring as ``--help`` prints it: reST markup dropped (double backquotes, roles such as
    :func:, bold stars, a closing double colon)."""
    doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", doc)
    doc = re.sub(r"``([^`]+)``", r"\1", doc)
    doc = re.sub(r"\*\*([^*]+)\*\*", r"\1", doc)
    return re.sub(r"::$", ":", doc, flags=re.M)
