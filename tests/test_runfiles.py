"""runfiles.py: a run's file names, its lock (taken over from a dead process of this host, or from
one whose pid a later process reuses, never from a live one or another host's), and the leftovers
of writers that died."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

import runfiles
from conftest import lock_text


def test_run_paths_name_every_file_of_a_run(tmp_path):
    paths = runfiles.run_paths(tmp_path, "results_x")
    assert {k: p.name for k, p in paths.items()} == {
        "csv": "results_x.csv", "config": "results_x.json", "model": "results_x.model.pt",
        "checkpoint": "results_x.ckpt.pt"}
    assert runfiles.lock_path(tmp_path, "results_x") == tmp_path / "results_x.lock"
    assert runfiles.read_run_json(tmp_path, "results_x") is None


@pytest.mark.parametrize("env, job", [
    ({}, "-"),  # a run started by hand
    ({"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "321"}, "321"),
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "5000", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "1"},
     "4242_1"),  # an array task: the id the launcher records, not SLURM_JOB_ID
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "5000"}, "5000"),
])
def test_a_lock_names_the_launcher_job_that_took_it(tmp_path, monkeypatch, env, job):
    for var in ("SUBMITIT_EXECUTOR", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    lock = tmp_path / "run.lock"
    with runfiles.RunLock(lock):
        owner = runfiles.lock_owner(lock)
    assert (owner.pid, owner.job) == (os.getpid(), job)
    assert owner.describe() == f"process {os.getpid()} on {socket.gethostname()}" + (f" (job {job})" if env else "")


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_attempt(tmp_path, monkeypatch):
    """Attempt 1 of job 4242_1 died on node2; SLURM requeued the job, and attempt 2 runs here. Only
    one attempt of a job runs at a time, so node2's lock is stale; another job's is not."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "5001")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    lock = tmp_path / "run.lock"
    lock.write_text(lock_text(1234, host="node2", job="4242_0"))
    with pytest.raises(runfiles.RunLockedError, match=r"process 1234 on node2 \(job 4242_0\)"):
        runfiles.RunLock(lock).__enter__()
    lock.write_text(lock_text(1234, host="node2", job="4242_1"))
    with runfiles.RunLock(lock):
        assert runfiles.lock_owner(lock).job == "4242_1" and runfiles.lock_owner(lock).host == socket.gethostname()


def test_locks_of_older_code_still_parse():
    assert runfiles.LockOwner.parse("node2 12") == runfiles.LockOwner("node2", 12, "-", "node2 12", "-")
    assert runfiles.LockOwner.parse("node2 12 b:9") == runfiles.LockOwner("node2", 12, "b:9", "node2 12 b:9", "-")
    assert runfiles.LockOwner.parse("node2 x") is None and runfiles.LockOwner.parse("a 1 b c d") is None


def test_lock_of_a_dead_process_is_taken_over(tmp_path, dead_pid):
    lock = tmp_path / "run.lock"
    lock.write_text(lock_text(dead_pid))
    with runfiles.RunLock(lock):
        assert lock.read_text() == lock_text(os.getpid())
        with pytest.raises(runfiles.RunLockedError):  # and now it is ours, alive
            runfiles.RunLock(lock).__enter__()
    assert not lock.exists()


def test_lock_from_another_host_is_respected(tmp_path, dead_pid):
    lock = tmp_path / "run.lock"
    lock.write_text(lock_text(dead_pid, host="some-other-host"))  # its liveness cannot be checked here
    with pytest.raises(runfiles.RunLockedError, match="some-other-host"):
        runfiles.RunLock(lock).__enter__()


@pytest.mark.parametrize("content", ["", "garbage", "{host} notapid", "{host} 1 a:1 7 extra", "other-host -1"])
def test_unreadable_lock_is_an_error_not_a_crash(tmp_path, content):
    """A lock it cannot read is respected (the user is told to delete it), never a crash."""
    lock = tmp_path / "run.lock"
    lock.write_text(content.format(host=socket.gethostname()))
    with pytest.raises(runfiles.RunLockedError, match=str(lock)):
        runfiles.RunLock(lock).__enter__()


def test_two_processes_cannot_both_take_over_one_stale_lock(tmp_path, dead_pid, live_pid, monkeypatch):
    """Process P finds the stale lock; before it removes it, process Q takes it over (removes it and
    writes its own). P must then see Q's live lock and stop, not delete it and run beside Q."""
    lock = tmp_path / "run.lock"
    lock.write_text(lock_text(dead_pid))
    real_alive = runfiles.pid_alive

    def alive_while_q_takes_over(pid: int) -> bool:
        if pid == dead_pid and lock.read_text() == lock_text(dead_pid):
            lock.unlink()  # Q's takeover, between P's check and P's removal
            lock.write_text(lock_text(live_pid))
            return False
        return real_alive(pid)

    monkeypatch.setattr(runfiles, "pid_alive", alive_while_q_takes_over)
    with pytest.raises(runfiles.RunLockedError, match=f"process {live_pid}"):
        runfiles.RunLock(lock).__enter__()
    assert lock.read_text() == lock_text(live_pid)


def test_temp_files_name_their_writer_and_dead_writers_leftovers_are_removed(tmp_path, dead_pid, live_pid):
    from results_logger import atomic_write_text, writer_tag
    target = tmp_path / "stage1" / "stage1_abc.pt"
    target.parent.mkdir()
    host = socket.gethostname().replace(".", "_")
    dead = target.parent / f".{target.name}.{host}-{dead_pid}.x1.tmp"
    alive = target.parent / f".{target.name}.{host}-{live_pid}.x2.tmp"
    remote = target.parent / f".{target.name}.other_host-{dead_pid}.x3.tmp"  # cannot be checked here
    for p in (dead, alive, remote):
        p.write_bytes(b"half")
    runfiles.remove_dead_writers_tmp(target)
    assert not dead.exists() and alive.exists() and remote.exists()
    assert writer_tag() == f"{host}-{os.getpid()}"
    atomic_write_text(target, "whole")  # and our own write leaves no temporary file
    assert target.read_text() == "whole"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, alive.name, remote.name])


def test_lock_of_a_pid_that_a_later_process_reuses_is_taken_over(tmp_path, live_pid):
    """After a kill -9 or a reboot the lock's pid may belong to another process: the lock records
    its process's identity (boot id and start time), so a reused pid does not hold it forever."""
    lock = tmp_path / "run.lock"
    true = runfiles.process_identity(live_pid)
    assert true.count(":") == 1 and true != runfiles.process_identity(os.getpid())
    boot = true.split(":")[0]
    lock.write_text(f"{socket.gethostname()} {live_pid} {boot}:1")  # the pid's earlier owner
    with runfiles.RunLock(lock):
        assert lock.read_text() == lock_text(os.getpid())
    lock.write_text(f"{socket.gethostname()} {live_pid} {true}")  # the pid's own process: respected
    with pytest.raises(runfiles.RunLockedError, match=f"process {live_pid}"):
        runfiles.RunLock(lock).__enter__()
    lock.write_text(f"{socket.gethostname()} {live_pid}")  # older code's lock, no identity: trust the pid
    with pytest.raises(runfiles.RunLockedError, match=f"process {live_pid}"):
        runfiles.RunLock(lock).__enter__()


def test_lock_is_created_whole_and_a_dead_writers_half_lock_is_cleaned(tmp_path, dead_pid, monkeypatch):
    """The lock appears with its content in one step (a hard link of a finished temporary file), so
    a kill can leave at most a temporary file, which the next taker removes."""
    lock = tmp_path / "run.lock"
    host = socket.gethostname().replace(".", "_")
    half = tmp_path / f".run.lock.{host}-{dead_pid}.tmp"
    half.write_text("")
    seen = []
    real_link = os.link

    def link(src, dst):
        seen.append(Path(src).read_text())  # what the lock will hold, at the moment it appears
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    with runfiles.RunLock(lock):
        assert seen == [lock_text(os.getpid())] and lock.read_text() == seen[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]


def test_lock_without_hard_links_still_works(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    lock = tmp_path / "run.lock"
    with runfiles.RunLock(lock):
        assert lock.read_text() == lock_text(os.getpid())
        with pytest.raises(runfiles.RunLockedError):
            runfiles.RunLock(lock).__enter__()
    assert not lock.exists()


def test_process_identity_of_a_process_whose_name_is_not_utf8(tmp_path):
    """The kernel cuts a process name at 15 bytes, which may split a UTF-8 character."""
    import subprocess
    import sys
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc")
    code = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'\\xc3\\xa9' * 9, 0, 0, 0); print(1, flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()  # renamed
        assert b"\xc3" in Path(f"/proc/{proc.pid}/stat").read_bytes()
        assert runfiles.process_identity(proc.pid).count(":") == 1
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_whose_write_fails_is_not_left_empty(tmp_path, monkeypatch):
    """Without hard links the lock is created, then written: a full disk must not leave it empty
    (an empty lock can never be taken over)."""
    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    real_write = os.write

    def disk_full(fd, data):
        if data == lock_text(os.getpid()).encode():
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "write", disk_full)
    lock = tmp_path / "run.lock"
    with pytest.raises(OSError, match="No space"):
        runfiles.RunLock(lock).__enter__()
    assert list(tmp_path.iterdir()) == []
