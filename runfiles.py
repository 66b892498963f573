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
from dataclasses import dataclass
from pathlib import Path

from results_logger import read_json, writer_tag

MUTEX_NAME = ".locks.mutex"  # the file an flock serialises lock takeovers on
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


def process_identity(pid: int) -> str:
    """``<boot id>:<start time>`` of process ``pid``: a pid reused after a reboot, or by a later
    process, has another one. "-" where ``/proc`` cannot tell (no such process, not Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        after_name = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()  # a name may hold any bytes
        return f"{boot}:{after_name[19].decode()}"  # field 22 of stat, starttime; after the name come fields 3 on
    except (OSError, IndexError, ValueError):
        return "-"


def launcher_job_id() -> str:
    """The id of the submitit job (local or SLURM) this process runs in, as the launcher records
    it; "-" outside one."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return "-"
    import submitit
    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # an environment submitit does not know
        return "-"


@dataclass(frozen=True)
class LockOwner:
    """Who wrote a run's lock: ``<host> <pid> <identity> <job>``; ``job`` is "-" outside a launcher
    job (locks of older code: ``<host> <pid>`` or ``<host> <pid> <identity>``)."""
    host: str
    pid: int
    identity: str
    text: str  # the lock file's content, as read
    job: str = "-"

    @classmethod
    def parse(cls, text: str) -> "LockOwner | None":
        """None for a lock that is not in this form (garbage, or half written by older code)."""
        fields = text.split()
        if not 2 <= len(fields) <= 4 or not fields[1].isdigit():
            return None
        identity, job = (fields[2:] + ["-", "-"])[:2]
        return cls(fields[0], int(fields[1]), identity, text, job)

    def describe(self) -> str:
        """"process <pid> on <host>", and its launcher job where it has one."""
        return f"process {self.pid} on {self.host}" + (f" (job {self.job})" if self.job != "-" else "")

    def alive_here(self) -> bool:
        """Whether its process still runs, for a lock of this host: the pid exists, and, where both
        identities are known, it is the same process, not a later one that reuses the pid."""
        if not pid_alive(self.pid):
            return False
        now = process_identity(self.pid)
        return "-" in (self.identity, now) or now == self.identity


def lock_text(pid: int | None = None, host: str | None = None, job: str | None = None) -> str:
    """The content of a lock taken by process ``pid`` in launcher job ``job`` (default: this
    process, in the job it runs in)."""
    pid = os.getpid() if pid is None else pid
    job = launcher_job_id() if job is None else job
    return f"{host or socket.gethostname()} {pid} {process_identity(pid)} {job}"


def lock_owner(path: Path) -> LockOwner | None:
    """Who holds a run's lock; None without one; host "?" and pid -1 if it cannot be read."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return LockOwner("?", -1, "-", "")
    return LockOwner.parse(text) or LockOwner("?", -1, "-", text)


def lock_is_stale(owner: LockOwner) -> bool:
    """A lock of this host whose process has ended, or one that an earlier attempt of this very
    launcher job took (a requeued SLURM job, on any node: the scheduler runs one attempt of a job
    at a time). Another host's process cannot be checked from here."""
    if owner.host == socket.gethostname():
        return not owner.alive_here()
    return owner.job != "-" and owner.job == launcher_job_id()


class RunLockedError(RuntimeError):
    pass


class RunLock:
    """An exclusive lock file for one run: a second process on the same run gets a clear error.
    A lock left by a dead process on this host is taken over.

    A file holding ``<host> <pid> <identity> <job>`` (:func:`lock_text`) rather than an ``flock``: it also
    works on the NFS folders a cluster's jobs share, and its content says who holds it (``--status``
    reads it), which lets a lock left by a dead process be taken over. It is written whole to a
    temporary file and then hard-linked to its name, which fails if the lock exists: a lock is never
    seen empty or half written."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        for _ in range(2):
            try:
                self._create()
                return self
            except FileExistsError:
                owner = lock_owner(self.path)
                if owner is None:  # released meanwhile
                    continue
                if lock_is_stale(owner):
                    self.remove_if_unchanged(owner.text)
                    continue
                raise RunLockedError(f"run {self.path.stem!r} is being written by {owner.describe()}; "
                                     f"wait for it, or delete {self.path} if that process is gone")
        raise RunLockedError(f"could not take the lock {self.path}")

    def _create(self) -> None:
        """Create the lock with its content in one step; FileExistsError if it exists."""
        remove_dead_writers_tmp(self.path)
        tmp = self.path.with_name(f".{self.path.name}.{writer_tag()}.tmp")
        try:
            tmp.write_text(lock_text())
            self._link(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _link(self, tmp: Path) -> None:
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            if os.stat(tmp).st_nlink < 2:  # 2: NFS resent a link it had made, and the lock is ours
                raise
        except OSError:  # a filesystem without hard links: create, then write (a moment half written)
            self._create_then_write()

    def _create_then_write(self) -> None:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, lock_text().encode())
        except OSError:
            self.path.unlink(missing_ok=True)  # never leave an empty lock behind
            raise
        finally:
            os.close(fd)

    def remove_if_unchanged(self, stale: str) -> None:
        """Delete the stale lock file if it still reads ``stale``. An flock makes the check and the
        delete one step between processes: otherwise two processes that both found the same stale
        lock could each delete the other's fresh one, and both run. The flock is on a file of the
        folder (an flock on NFS needs a file open for writing, not a folder)."""
        import fcntl

        fd = os.open(self.path.parent / MUTEX_NAME, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
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
