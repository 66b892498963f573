"""What a run leaves in its ``log_dir``, known in one place: its file names, its lock, and the
temporary files of writers that died.

A run named ``<name>`` (:func:`two_stage_ictta.run_name`) writes ``<name>.csv`` (one row per epoch
and split), ``<name>.json`` (config, status, results), ``<name>.model.pt`` (once finished) and
``<name>.ckpt.pt`` (the last epoch's checkpoint, deleted once finished), under the lock
``<name>.lock``. Nothing here changes a number.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from results_logger import read_json

SUFFIXES = {"csv": ".csv", "config": ".json", "model": ".model.pt", "checkpoint": ".ckpt.pt"}


def run_paths(log_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    """The files of run ``name``: ``{"csv", "config" (the JSON), "model", "checkpoint"}``."""
    return {key: Path(log_dir) / f"{name}{suffix}" for key, suffix in SUFFIXES.items()}


def lock_path(log_dir: str | os.PathLike, name: str) -> Path:
    return Path(log_dir) / f"{name}.lock"


def read_run_json(log_dir: str | os.PathLike, name: str) -> dict | None:
    """The run's JSON (its config, status and results), or None without one."""
    return read_json(run_paths(log_dir, name)["config"])


def remove_attempt_tmp(log_dir: str | os.PathLike, name: str) -> None:
    """Delete the temporary files of an attempt at run ``name`` that was killed (call with its lock held)."""
    for suffix in SUFFIXES.values():
        for tmp in Path(log_dir).glob(f".{name}{suffix}.*.tmp"):
            tmp.unlink(missing_ok=True)


def remove_dead_writers_tmp(path: Path) -> None:
    """Delete the temporary files of ``path`` left by processes of this host that have died."""
    host = socket.gethostname().replace(".", "_")
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        writer = tmp.name[len(path.name) + 2:].split(".")[0]  # <host>-<pid>
        w_host, _, pid = writer.rpartition("-")
        if w_host == host and pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; a pid no process can have
        return False
    except PermissionError:
        return True
    return True


def lock_owner(path: Path) -> tuple[str, int] | None:
    """(host, pid) written in a run's lock file; None without one; ("?", -1) if unreadable."""
    try:
        host, pid = path.read_text().split()
        return host, int(pid)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written, or garbage
        return "?", -1


class RunLockedError(RuntimeError):
    pass


class RunLock:
    """An exclusive lock file for one run: a second process on the same run gets a clear error.
    A lock left by a dead process on this host is taken over.

    A plain ``O_CREAT | O_EXCL`` file holding ``<host> <pid>`` rather than an ``flock``: it also
    works on the NFS folders a cluster's jobs share, and its content says who holds it (``--status``
    reads it), which lets a lock left by a dead process be taken over."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, me.encode())
                os.close(fd)
                return self
            except FileExistsError:
                try:
                    text = self.path.read_text()
                    host, pid = text.split()
                    int(pid)
                except (OSError, ValueError):
                    text, host, pid = None, "", "0"
                if host == socket.gethostname() and not pid_alive(int(pid)):
                    self.remove_if_unchanged(text)
                    continue
                raise RunLockedError(f"run {self.path.stem!r} is being written by process {pid} on "
                                     f"{host}; wait for it, or delete {self.path} if that process is gone")
        raise RunLockedError(f"could not take the lock {self.path}")

    def remove_if_unchanged(self, stale: str) -> None:
        """Delete the stale lock file if it still reads ``stale``. A flock on the folder makes the
        check and the delete one step between processes: otherwise two processes that both found
        the same stale lock could each delete the other's fresh one, and both run."""
        import fcntl

        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close
            if self.path.read_text() == stale:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
