"""Launchers through submitit: local jobs (real subprocesses) give the inline results, a job killed
with SIGKILL is picked up on rerun, --status, and the SLURM path as far as it goes without a cluster
(a fake sbatch on PATH: the sbatch text submitit writes, and the job it pickles, run as SLURM would)."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cloudpickle
import pandas as pd
import pytest
from submitit.core.utils import DelayedSubmission

import launch
from conftest import TEST_PRECISION, lock_text
import run_all_models as grid
from config import config_hash, run_name, stage1_path

ROOT = Path(__file__).resolve().parents[1]
TUNE = "tune-lr0.003-w1-8-g1.5-loss"  # experiments/smoke_grid.yaml's tuning point


def smoke_runs(suite: str, log_dir, scenarios=("long_tail",), **settings) -> list:
    """The runs of one suite of experiments/smoke_grid.yaml, written to ``log_dir``."""
    exp = grid.load_experiment(grid.experiment_path("smoke_grid"))
    parts = grid.plan_experiment(exp, log_dir, grid.Filters(scenarios=list(scenarios),
                                                              settings={"precision": TEST_PRECISION, **settings}))
    return [dataclasses.replace(c, log_dir=str(log_dir)) for name, cfgs in parts if name == suite for c in cfgs]


def read_results(folder: Path) -> dict[str, pd.DataFrame]:
    """Every run's CSV in folder, without the wall-clock column."""
    return {p.name: pd.read_csv(p).drop(columns=["seconds"]) for p in sorted(folder.glob("results_*.csv"))}


def assert_same_results(a: dict, b: dict) -> None:
    assert set(a) == set(b) and a
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)


def smoke_args(data_root: Path, out: Path, *extra: str, scenarios=("long_tail",)) -> list[str]:
    # one thread per run: CPU results are bitwise equal only for equal thread counts
    return ["--profile", "smoke_grid", "--models", "resnet10", "--scenarios", *scenarios, "--data-root", str(data_root),
            "--out", str(out), "--device", "cpu", "--precision", TEST_PRECISION, "--threads", "1", "--quiet", *extra]


def cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_all_models.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kw)


def status_line(data_root: Path, out: Path, capsys, **kw) -> str:
    assert grid.main(smoke_args(data_root, out, "--status", **kw)) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def inline_results(synthetic_root, tmp_path_factory) -> dict[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("inline")
    r = cli(smoke_args(synthetic_root, out))
    assert r.returncode == 0, r.stderr[-2000:]
    return read_results(out / "smoke")


def test_local_launcher_with_two_jobs_equals_inline(synthetic_root, tmp_path, inline_results, capsys):
    out = tmp_path / "local"
    r = cli(smoke_args(synthetic_root, out, "--launcher", "local", "--jobs", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "3 done" in r.stdout and "0 failed" in r.stdout
    assert_same_results(inline_results, read_results(out / "smoke"))
    # the baseline run trained the shared stage 1 in a job of its own; the other two then ran one job each
    records = [json.loads(p.read_text()) for p in (out / "smoke" / "jobs").glob("*/*_runs.json")]
    assert sorted(len(rec["runs"]) for rec in records) == [1, 1, 1]
    assert len(list((out / "smoke" / "stage1").glob("*.pt"))) == 1
    # each run records the command a user typed, not the job's own (submitit's) command line
    commands = {json.loads(p.read_text())["command"] for p in (out / "smoke").glob("results_*.json")}
    assert len(commands) == 1 and "run_all_models.py --profile smoke_grid" in commands.pop()
    # a finished run is never submitted again
    assert grid.main(smoke_args(synthetic_root, out, "--launcher", "local", "--jobs", "2")) == 0
    assert "0 done (0 resumed), 3 skipped (finished before), 0 failed; 0 local jobs" in capsys.readouterr().out
    assert len(list((out / "smoke" / "jobs").glob("*/*_runs.json"))) == 3
    assert "3 runs: 3 done, 0 running" in status_line(synthetic_root, out, capsys)


def test_local_job_killed_midway_is_picked_up_on_rerun(synthetic_root, tmp_path, inline_results, capsys):
    out = tmp_path / "killed"
    log_dir = out / "smoke"
    assert "3 runs: 0 done, 0 running (0 in progress, 0 queued in live jobs), 0 failed, 3 missing" in \
        status_line(synthetic_root, out, capsys)
    proc = subprocess.Popen([sys.executable, "run_all_models.py",
                             *smoke_args(synthetic_root, out, "--launcher", "local", "--jobs", "2", "--retries", "0")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, pid, deadline = None, None, time.time() + 120
    while pid is None and time.time() < deadline and proc.poll() is None:
        for lock in log_dir.glob("*.lock"):  # a job's process holds the lock of the run it is on
            try:
                if lock.with_suffix(".ckpt.pt").exists():  # and has checkpointed an epoch (stage 1 of 2)
                    pid = int(lock.read_text().split()[1])
                    break
            except (OSError, IndexError, ValueError):  # gone, or not written yet
                pass
        time.sleep(0.002)
    assert pid is not None, "no run was caught between its two epochs"
    os.kill(pid, signal.SIGSTOP)  # frozen midway, so that --status sees it live
    try:
        text = status_line(synthetic_root, out, capsys)
        assert re.search(rf"in progress, epoch [12] of 1 \+ 1 done: pid {pid}", text), text
    finally:
        os.kill(pid, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    assert "2 done" in stdout and "1 failed" in stdout and "ended without a result" in stdout
    assert lock.exists()  # a SIGKILLed process leaves its lock behind
    text = status_line(synthetic_root, out, capsys)
    assert "3 runs: 2 done, 0 running (0 in progress, 0 queued in live jobs), 1 failed, 0 missing" in text
    assert re.search(r"killed: it started but no live process holds its lock \(local job \d+ ended\); "
                     r"a launch goes on after epoch [12] of 1 \+ 1", text), text

    assert grid.main(smoke_args(synthetic_root, out, "--launcher", "local", "--jobs", "2")) == 0
    report = capsys.readouterr().out
    assert "1 done (1 resumed)" in report and "2 skipped" in report and "1 local jobs" in report
    assert_same_results(inline_results, read_results(log_dir))
    assert not list(log_dir.glob("*.lock")) and not list(log_dir.glob("*.tmp"))  # the run's own files


def test_the_time_budget_stops_the_jobs_cleanly_and_the_same_command_goes_on(synthetic_root, tmp_path,
                                                                             inline_results):
    """--budget-min: past it no job starts, the live ones are interrupted (each keeps its last
    finished epoch), and the same command without it finishes with the uninterrupted numbers."""
    out = tmp_path / "budget"
    r = cli(smoke_args(synthetic_root, out, "--launcher", "local", "--jobs", "1", "--budget-min", "0.05"))
    assert "stopped at the time budget (0.05 min)" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(read_results(out / "smoke")) < 3 or any(  # not all three finished in 3 seconds
        json.loads(p.read_text())["status"] != "finished" for p in (out / "smoke").glob("results_*.json"))
    r = cli(smoke_args(synthetic_root, out, "--launcher", "local", "--jobs", "1"))
    assert r.returncode == 0 and "0 failed" in r.stdout, r.stderr[-2000:]
    assert_same_results(inline_results, read_results(out / "smoke"))


def test_a_job_that_died_is_resubmitted_then_reported_failed(synthetic_root, tmp_path):
    first, waiting = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                                        data_root=str(synthetic_root), device="cpu")
    dead = SimpleNamespace(job_id="77", paths=SimpleNamespace(result_pickle=tmp_path / "77_0_result.pkl",
                                                              stderr=tmp_path / "77_0_log.err"))
    report = launch.new_report(retried=[])
    again = launch._finish(dead, launch.JobSpec([first], then=[waiting]), retries=1, report=report, quiet=True)
    assert again == [launch.JobSpec([first], then=[waiting], attempt=1)]  # the waiting run still waits
    assert len(report["retried"]) == 1 and not report["failed"]
    after = launch._finish(dead, again[0], retries=1, report=report, quiet=True)
    assert [f["run"] for f in report["failed"]] == [launch.describe(first)]
    assert "77 ended without a result" in report["failed"][0]["error"]
    assert after == [launch.JobSpec([waiting])]  # now on its own: it trains the stage 1 itself


def test_a_run_another_process_holds_is_left_to_it_and_its_waiting_runs_deferred(synthetic_root, tmp_path,
                                                                                   live_pid):
    """Two launches on one folder: the run the other one is training is locked, not failed, and the
    runs waiting for its stage 1 do not train that stage 1 a second time."""
    first, waiting = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                                        data_root=str(synthetic_root), device="cpu")
    (tmp_path / f"{run_name(first)}.lock").write_text(lock_text(live_pid))
    outcome = launch.run_one(first, quiet=True)
    assert outcome["status"] == "locked" and f"process {live_pid}" in outcome["error"]
    result = tmp_path / "78_0_result.pkl"
    result.write_bytes(b"")
    job = SimpleNamespace(job_id="78", paths=SimpleNamespace(result_pickle=result), result=lambda: [outcome])
    report = launch.new_report(retried=[], deferred=[])
    assert launch._finish(job, launch.JobSpec([first], then=[waiting]), retries=1, report=report, quiet=True) == []
    assert report["deferred"] == [launch.describe(waiting)] and not report["failed"] and not report["retried"]
    assert report["locked"] == [f"{launch.describe(first)} ({outcome['error']})"]
    assert "1 left to other processes" in launch.format_report(report)
    assert "left to the process that holds its lock" in launch.format_report(report)


def test_a_lock_another_launcher_took_meanwhile_is_not_deleted(synthetic_root, tmp_path):
    """The launcher read the lock that job 77 (ended) left on node2; if the lock reads otherwise by
    the time it deletes it, another launcher's job holds it now, and it stays."""
    run, _ = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                                data_root=str(synthetic_root), device="cpu")
    lock = tmp_path / f"{run_name(run)}.lock"
    lock.write_text(lock_text(1234, host="node2", job="77"))
    seen = launch.lock_owner(lock)
    lock.write_text("node5 99 x:1 80")  # taken over meanwhile by job 80
    launch.drop_other_hosts_lock(run, seen, "77")
    assert lock.read_text() == "node5 99 x:1 80"
    launch.drop_other_hosts_lock(run, launch.lock_owner(lock), "77")  # job 80 took it, not 77
    assert lock.read_text() == "node5 99 x:1 80"
    launch.drop_other_hosts_lock(run, launch.lock_owner(lock), "80")
    assert not lock.exists()


@pytest.mark.parametrize("holder, named", [("node2 1234 - -", "the lock names no launcher job"),
                                           ("node2 1234", "the lock names no launcher job"),  # older code's
                                           ("node2 1234 b:5 4300_0", "job 4300_0")])
def test_a_lock_on_another_host_that_the_runs_last_job_did_not_take_stays(synthetic_root, tmp_path, holder, named):
    """The run's last job (4242_0) has ended, but the lock on node2 is some other process's: a run
    started there by hand, or a job of another launcher. The launcher cannot check it, so the run
    counts as running, its lock stays, and ``--status`` names the file to delete."""
    run, _ = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                                data_root=str(synthetic_root), device="cpu")
    lock = tmp_path / f"{run_name(run)}.lock"
    lock.write_text(holder)
    spec = launch.JobSpec([run])
    launch._write_record(tmp_path / "jobs" / "a", "4242_0", "slurm", spec)
    (tmp_path / "jobs" / "a" / "4242_0_0_result.pkl").write_bytes(b"")  # a result file: the job has ended
    [state] = launch.grid_status([run], tmp_path / "jobs")["runs"]
    assert state["state"] == "running"
    assert state["detail"] == f"in progress: pid 1234 on node2 ({named}; if that process has ended, delete {lock})"
    report = launch.launch([run], launch.LaunchConfig("slurm"), tmp_path / "jobs")
    assert lock.read_text() == holder and report["running"] == [f"{launch.describe(run)} ({state['detail']})"]


def test_status_of_an_unreadable_lock_says_to_delete_it(synthetic_root, tmp_path):
    run, _ = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                                data_root=str(synthetic_root), device="cpu")
    lock = tmp_path / f"{run_name(run)}.lock"
    lock.write_text("garbage")
    [state] = launch.grid_status([run], tmp_path / "jobs")["runs"]
    assert (state["state"], state["detail"]) == (
        "running", f"its lock cannot be read; if no process writes this run, delete {lock}")


def test_slurm_wait_retry_clears_the_lock_the_dead_node_left(synthetic_root, tmp_path, monkeypatch):
    """With --wait, a job that died on node2 is resubmitted; the retry may land on another node, so
    node2's lock on the run must be gone first (it cannot be taken over from elsewhere)."""
    run, _ = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                                data_root=str(synthetic_root), device="cpu")
    lock = tmp_path / f"{run_name(run)}.lock"
    lock.write_text(lock_text(1234, host="node2", job="90"))
    lock_at_submission = []

    def submit(specs, lc, folder, report):
        lock_at_submission.append(lock.exists())
        dead = SimpleNamespace(job_id="90", done=lambda: True,
                               paths=SimpleNamespace(result_pickle=tmp_path / "none.pkl", stderr=tmp_path / "e"))
        return [(dead, spec) for spec in specs]

    monkeypatch.setattr(launch, "_submit_slurm", submit)
    report = launch.new_report(retried=[], submitted=[])
    launch._launch_slurm([launch.JobSpec([run])], launch.LaunchConfig("slurm", wait=True, retries=1), tmp_path, report)
    assert lock_at_submission == [True, False] and len(report["retried"]) == 1 and len(report["failed"]) == 1


def test_status_of_a_run_finished_by_other_code_says_so(synthetic_root, tmp_path):
    """Not "its job ended before running it": it finished, by other code, and a launch reruns it."""
    run, _ = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                                data_root=str(synthetic_root), device="cpu")
    (tmp_path / f"{run_name(run)}.csv").write_text("stage\n1\n")
    (tmp_path / f"{run_name(run)}.json").write_text(json.dumps(
        {"status": "finished", "run_id": config_hash(run), "code_fingerprint": "older"}))
    [state] = launch.grid_status([run], tmp_path / "jobs")["runs"]
    assert state["state"] == "failed" and state["detail"].startswith("finished, but made by other code")
    [kept] = launch.grid_status([dataclasses.replace(run, accept_code_change=True)], tmp_path / "jobs")["runs"]
    assert kept["state"] == "done"


def test_status_of_a_run_whose_files_hold_other_settings_names_them(synthetic_root, tmp_path):
    """What a status without the launch's own options (say its --precision) shows."""
    run, _ = smoke_runs("baseline", scenarios=("long_tail",), log_dir=str(tmp_path),
                        data_root=str(synthetic_root), device="cpu", precision="fp32")
    recorded = {**dataclasses.asdict(run), "precision": "bf16"}
    (tmp_path / f"{run_name(run)}.csv").write_text("stage\n1\n")
    (tmp_path / f"{run_name(run)}.json").write_text(json.dumps(
        {"status": "finished", "run_id": "another", "config": recorded}, default=str))
    [state] = launch.grid_status([run], tmp_path / "jobs")["runs"]
    assert (state["state"], state["detail"]) == (
        "failed", "its files hold a run with other settings (precision 'bf16' there, 'fp32' here)")


def test_grid_job_pickles_and_never_trains_a_stage1_it_must_wait_for(synthetic_root, tmp_path):
    cfg = smoke_runs("tuning", scenarios=("long_tail",), log_dir=str(tmp_path / "runs"),
                           data_root=str(synthetic_root), device="cpu")[0]
    job = cloudpickle.loads(cloudpickle.dumps(launch._grid_job([cfg], stage1_required=True)))
    assert isinstance(job, launch.GridJob) and job.configs == [cfg]
    [outcome] = job()  # its stage 1 is not there: fails at once, retryable, and writes nothing
    assert outcome["status"] == "failed" and outcome["retryable"] and "stage 1" in outcome["error"]
    assert not stage1_path(cfg).exists() and not list((tmp_path / "runs").glob("results_*"))
    requeued = job.checkpoint()  # what submitit requeues on preemption: the same job
    assert isinstance(requeued, DelayedSubmission) and requeued.function is job


def test_a_stale_shared_stage1_is_planned_as_trained_again_by_one_job(synthetic_root, tmp_path):
    """A shared stage 1 made by other code is trained again (the run never reuses it), so the plan
    counts it and the jobs train it once: the first run's job, the other waits for it."""
    import torch
    from results_logger import code_fingerprint

    first, second = smoke_runs("baseline", log_dir=str(tmp_path), data_root=str(synthetic_root), device="cpu")
    assert stage1_path(first) == stage1_path(second)
    stage1_path(first).parent.mkdir()
    for fingerprint, stale in (("older", True), (code_fingerprint(), False)):
        torch.save({"code_fingerprint": fingerprint}, stage1_path(first))
        work = launch.plan_work([first, second], {})
        assert [w["trains_stage1"] for w in work] == [stale, False], fingerprint
        jobs = launch.plan_jobs([first, second])
        assert [(j.configs, j.then) for j in jobs] == ([([first], [second])] if stale else
                                                       [([first], []), ([second], [])]), fingerprint
    torch.save({"code_fingerprint": "older"}, stage1_path(first))
    accepted = [dataclasses.replace(c, accept_code_change=True) for c in (first, second)]
    assert [w["trains_stage1"] for w in launch.plan_work(accepted, {})] == [False, False]


def test_runs_waiting_for_a_live_jobs_stage1_are_queued_first_once_it_is_written(synthetic_root, tmp_path, monkeypatch):
    """The local launcher starts the runs that wait for a job's stage 1 when that job writes it, not
    when it ends; a stale stage 1 (other code) releases nobody, and a file is read only when it changed."""
    import torch
    from collections import deque
    from results_logger import code_fingerprint

    first, second = smoke_runs("baseline", log_dir=str(tmp_path), data_root=str(synthetic_root), device="cpu")
    other = dataclasses.replace(first, seed=1)
    job, leader = object(), launch.JobSpec([first], then=[second])
    live, queue, seen = {0: (job, leader)}, deque([launch.JobSpec([other])]), {}

    def queued():
        return [spec.configs for spec in queue]

    launch.hand_on_written_stage1(live, queue, seen)
    assert queued() == [[other]] and live[0][1].then == [second]  # nothing written yet
    stage1_path(first).parent.mkdir()
    torch.save({"code_fingerprint": "older"}, stage1_path(first))
    reads = []
    monkeypatch.setattr(launch, "has_current_stage1", lambda cfg, read=launch.has_current_stage1: reads.append(1) or read(cfg))
    launch.hand_on_written_stage1(live, queue, seen)
    launch.hand_on_written_stage1(live, queue, seen)
    assert queued() == [[other]] and live[0][1].then == [second]  # stale: the leader trains it again
    assert len(reads) == 1  # read once, not at every look
    torch.save({"code_fingerprint": code_fingerprint()}, stage1_path(first))
    os.utime(stage1_path(first), ns=(seen[stage1_path(first)] + 10**9,) * 2)
    launch.hand_on_written_stage1(live, queue, seen)
    assert queued() == [[second], [other]] and live[0] == (job, launch.JobSpec([first]))
    launch.hand_on_written_stage1(live, queue, seen)
    assert queued() == [[second], [other]]  # handed on once


def test_the_local_launcher_starts_the_waiting_run_while_the_stage1_trainer_goes_on(synthetic_root, tmp_path,
                                                                                   monkeypatch):
    """With a free slot, the run that waits for a stage 1 starts as soon as the job training it has
    written it, before that job ends (fake jobs: the first writes its stage 1 at its first look)."""
    import torch
    from results_logger import code_fingerprint

    first, second = smoke_runs("baseline", log_dir=str(tmp_path), data_root=str(synthetic_root), device="cpu")
    events = []

    class FakeJob:
        def __init__(self, spec):
            self.name, self.looks = spec.configs[0].exp_name, 0
            events.append(("start", self.name))

        def done(self):
            self.looks += 1
            if self.name == first.exp_name and self.looks == 1:
                stage1_path(first).parent.mkdir(exist_ok=True)
                torch.save({"code_fingerprint": code_fingerprint()}, stage1_path(first))
            return self.name != first.exp_name or ("start", second.exp_name) in events or self.looks > 50

    def finish(job, spec, retries, report, quiet):
        events.append(("end", job.name))
        return launch.plan_jobs(spec.then)

    monkeypatch.setattr(launch, "_start_local_job", lambda spec, lc, slot, folder, report: FakeJob(spec))
    monkeypatch.setattr(launch, "_finish", finish)
    monkeypatch.setattr(launch, "POLL_S", 0.001)
    specs = launch.plan_jobs([first, second])
    assert [(j.configs, j.then) for j in specs] == [([first], [second])]
    launch._launch_local(specs, launch.LaunchConfig(jobs=2, quiet=True), tmp_path / "jobs", {})
    assert events == [("start", first.exp_name), ("start", second.exp_name),
                      ("end", first.exp_name), ("end", second.exp_name)]


def test_the_plan_goes_on_from_a_checkpoint_only_where_the_run_would(synthetic_root, tmp_path):
    """``resume_point`` and ``plan_work`` read a run's own checkpoint as the run does: of its
    settings, made by this code (or accepted), readable, and only with resume on."""
    import torch
    from config import config_hash
    from results_logger import code_fingerprint
    from runfiles import run_paths

    first, second = smoke_runs("baseline", log_dir=str(tmp_path), data_root=str(synthetic_root), device="cpu")
    ckpt = run_paths(first.log_dir, run_name(first))["checkpoint"]

    def save(stage, epoch, run_id=config_hash(first), fingerprint=code_fingerprint()):
        torch.save({"run_id": run_id, "code_fingerprint": fingerprint, "st": {"stage": stage, "epoch": epoch}}, ckpt)

    assert launch.resume_point(first) is None
    save(2, 1)
    assert launch.resume_point(first) == (2, 1) and launch.resume_point(second) is None
    work = launch.plan_work([first, second], {})
    assert [w["resume_from"] for w in work] == [(2, 1), None]
    assert [w["trains_stage1"] for w in work] == [False, True]  # the second's stage 1 is not on disk yet
    assert launch.resume_point(dataclasses.replace(first, resume=False)) is None
    save(1, 0)
    assert [w["trains_stage1"] for w in launch.plan_work([first, second], {})] == [True, False]
    save(2, 1, run_id="other settings")
    assert launch.resume_point(first) is None
    save(2, 1, fingerprint="older")
    assert launch.resume_point(first) is None
    assert launch.resume_point(dataclasses.replace(first, accept_code_change=True)) == (2, 1)
    ckpt.write_bytes(b"truncated")
    assert launch.resume_point(first) is None  # the run itself says why it cannot read it


def test_the_run_furthest_into_a_shared_stage1_trains_it_and_the_others_wait(synthetic_root, tmp_path):
    """Of runs sharing a stage 1 not yet written, the one whose own checkpoint is furthest into it
    leads (goes on from there) and the others wait for it, whatever order the experiment lists them
    in; without checkpoints the listed order stands."""
    import torch
    from config import config_hash
    from results_logger import code_fingerprint
    from runfiles import run_paths

    first, second = (dataclasses.replace(c, stage1_epochs=3) for c in smoke_runs(
        "baseline", log_dir=str(tmp_path), data_root=str(synthetic_root), device="cpu"))
    assert launch.order_for_sharing([first, second]) == [first, second]
    torch.save({"run_id": config_hash(second), "code_fingerprint": code_fingerprint(), "st": {"stage": 1, "epoch": 1}},
               run_paths(second.log_dir, run_name(second))["checkpoint"])
    assert launch.stage1_epochs_done(second) == 1 and launch.stage1_epochs_done(first) == 0
    assert launch.order_for_sharing([first, second]) == [second, first]
    assert [(j.configs, j.then) for j in launch.plan_jobs(launch.order_for_sharing([first, second]))] == [
        ([second], [first])]
    work = launch.plan_work(launch.order_for_sharing([first, second]), {})
    assert [w["trains_stage1"] for w in work] == [True, False]
    torch.save({"run_id": config_hash(second), "code_fingerprint": code_fingerprint(), "st": {"stage": 2, "epoch": 0}},
               run_paths(second.log_dir, run_name(second))["checkpoint"])
    assert launch.order_for_sharing([second, first]) == [first, second]  # in stage 2: it writes no stage 1
    alone = dataclasses.replace(second, reuse_stage1=False, exp_name="alone")  # trains a stage 1 of its own
    assert [(j.configs, j.then) for j in launch.plan_jobs([alone, first, second])] == [
        ([alone], []), ([first], [second])]


def test_a_budget_stop_names_the_runs_that_waited_for_a_live_job(synthetic_root, tmp_path):
    from collections import deque

    first, second = smoke_runs("baseline", log_dir=str(tmp_path), data_root=str(synthetic_root), device="cpu")
    job = SimpleNamespace(cancel=lambda check: None, done=lambda: True)
    report = {}
    launch._stop_at_budget(deque(), {0: (job, launch.JobSpec([first], then=[second]))}, report, 1.0)
    assert report["stopped"] == {"budget_min": 1.0, "interrupted": [launch.describe(first)],
                                 "not_started": [launch.describe(second)]}


FAKE_SBATCH = """#!/bin/sh
d=$(dirname "$0")
n=$(cat "$d/next_id")
echo $((n + 1)) > "$d/next_id"
cp "$1" "$d/sbatch_$n.sh"
echo "Submitted batch job $n"
"""
FAKE_SRUN = """#!/bin/sh
# run the command as srun would, in this shell, without srun's own options
while [ $# -gt 0 ]; do case "$1" in --unbuffered) shift;; --output|--error) shift 2;; *) break;; esac; done
exec "$@"
"""
FAKE_SACCT = """#!/bin/sh
cat "$(dirname "$0")/sacct.txt" 2>/dev/null || echo 'JobID|State|NodeList'
"""
FAKE_SQUEUE = """#!/bin/sh
cat "$(dirname "$0")/squeue.txt" 2>/dev/null || true
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT), ("squeue", FAKE_SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "next_id").write_text("4242")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_slurm_submission_status_and_resubmission_after_an_outage(synthetic_root, tmp_path, fake_slurm, capsys):
    out = tmp_path.resolve() / "out"
    log_dir = out / "smoke"
    slurm = ["--launcher", "slurm", "--partition", "gpu", "--gpus-per-job", "1", "--timeout-min", "90",
             "--mem-gb", "16", "--slurm-extra", "account=proj", "qos=high"]
    args = smoke_args(synthetic_root, out, *slurm, scenarios=("long_tail", "head_tail"))
    plan = {run_name(c): c for c in
            smoke_runs("baseline", scenarios=("long_tail", "head_tail"), log_dir=str(log_dir),
                               data_root=str(synthetic_root), device="cpu", threads=1)
            + smoke_runs("tuning", scenarios=("long_tail", "head_tail"), log_dir=str(log_dir),
                               data_root=str(synthetic_root), device="cpu", threads=1)}
    name = {(exp, scen): f"results_{exp}_resnet10_{scen}_imb0.1_seed0" for exp in ("baseline", "control", TUNE)
            for scen in ("long_tail", "head_tail")}

    assert grid.main(args) == 0
    assert "follow them with:" in capsys.readouterr().out
    # 3 sbatch calls: the two stage-1 trainers as one array, then per stage 1 the runs that wait for it
    sbatch = {n: (fake_slurm / f"sbatch_{n}.sh").read_text() for n in (4242, 4243, 4244)}
    assert not (fake_slurm / "sbatch_4245.sh").exists()
    for text in sbatch.values():
        for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
                     "#SBATCH --mem=16GB", "#SBATCH --account=proj", "#SBATCH --qos=high",
                     "#SBATCH --job-name=ictta-smoke", "#SBATCH --array=0-1%2"):
            assert line in text.splitlines(), (line, text)
        assert f"PYTHONPATH={ROOT}" in text and "-m submitit.core._submit" in text
    assert "--dependency" not in sbatch[4242]
    assert "#SBATCH --dependency=afterany:4242_0" in sbatch[4243]
    assert "#SBATCH --dependency=afterany:4242_1" in sbatch[4244]
    # each array task's pickle is a GridJob of the planned config
    jobs = {}
    for rec_path in log_dir.glob("jobs/*/*_runs.json"):
        rec = json.loads(rec_path.read_text())
        job = DelayedSubmission.load(rec_path.parent / f"{rec['job_id']}_submitted.pkl").function
        assert isinstance(job, launch.GridJob) and len(job.configs) == 1
        assert job.configs[0] == plan[run_name(job.configs[0])]
        assert rec["runs"] == [str(log_dir / run_name(job.configs[0]))]
        assert job.stage1_required == (rec["after"] is not None)
        jobs[run_name(job.configs[0])] = rec["job_id"]
    assert jobs == {name["baseline", "long_tail"]: "4242_0", name["baseline", "head_tail"]: "4242_1",
                    name["control", "long_tail"]: "4243_0", name[TUNE, "long_tail"]: "4243_1",
                    name["control", "head_tail"]: "4244_0", name[TUNE, "head_tail"]: "4244_1"}

    # array task 4242_0 runs on a node: the sbatch script, with the environment SLURM gives it
    env = {**os.environ, "SLURM_JOB_ID": "5000", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "1",
           "SLURM_JOB_NUM_NODES": "1"}
    r = subprocess.run(["sh", str(fake_slurm / "sbatch_4242.sh")], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"done: {launch.describe(plan[name['baseline', 'long_tail']])}" in r.stdout
    assert stage1_path(plan[name["baseline", "long_tail"]]).exists()

    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|COMPLETED|n1\n4242_1|RUNNING|n2\n"
                                          "4243_[0-1]|PENDING|\n4244_[0-1]|PENDING|\n")
    lock = log_dir / f"{name['baseline', 'head_tail']}.lock"
    lock.write_text(lock_text(1234, host="node2", job="4242_1"))  # 4242_1 is training on node2
    text = status_line(synthetic_root, out, capsys, scenarios=("long_tail", "head_tail"))
    assert "6 runs: 1 done, 5 running (1 in progress, 4 queued in live jobs), 0 failed, 0 missing" in text
    assert "in progress: pid 1234 on node2 (slurm job 4242_1)" in text
    assert grid.main(args) == 0  # nothing to submit: one run is done, the others are in live jobs
    assert "1 skipped" in capsys.readouterr().out and (fake_slurm / "next_id").read_text().strip() == "4245"

    # a cluster outage: node2 dies, the waiting jobs are cancelled; node2's lock stays behind
    (fake_slurm / "sacct.txt").write_text("JobID|State|NodeList\n4242_0|COMPLETED|n1\n4242_1|NODE_FAIL|n2\n"
                                          "4243_[0-1]|CANCELLED by 0|\n4244_[0-1]|CANCELLED by 0|\n")
    text = status_line(synthetic_root, out, capsys, scenarios=("long_tail", "head_tail"))
    assert "6 runs: 1 done, 0 running (0 in progress, 0 queued in live jobs), 5 failed, 0 missing" in text
    assert grid.main(args) == 0  # resubmits the 5 runs that are missing, and no other
    assert not lock.exists()
    new = {}
    for rec_path in log_dir.glob("jobs/*/*_runs.json"):
        rec = json.loads(rec_path.read_text())
        if rec["job_id"].split("_")[0] in ("4245", "4246"):
            new[Path(rec["runs"][0]).name] = (rec["job_id"], rec["after"])
    # long_tail's stage 1 is trained now: its two runs start at once; head_tail's trains again first
    assert new == {name["control", "long_tail"]: ("4245_0", None), name[TUNE, "long_tail"]: ("4245_1", None),
                   name["baseline", "head_tail"]: ("4245_2", None),
                   name["control", "head_tail"]: ("4246_0", "4245_2"), name[TUNE, "head_tail"]: ("4246_1", "4245_2")}
    assert "#SBATCH --array=0-2%3" in (fake_slurm / "sbatch_4245.sh").read_text()
    # jobs that sacct does not know (yet, or any more) are live while squeue lists them
    (fake_slurm / "squeue.txt").write_text("4245_2\n4245_[0-1]\n4246_[0-1]\n")
    text = status_line(synthetic_root, out, capsys, scenarios=("long_tail", "head_tail"))
    assert "6 runs: 1 done, 5 running (0 in progress, 5 queued in live jobs), 0 failed, 0 missing" in text
    (fake_slurm / "squeue.txt").write_text("4246_[0-1]\n")
    text = status_line(synthetic_root, out, capsys, scenarios=("long_tail", "head_tail"))
    assert "6 runs: 1 done, 2 running (0 in progress, 2 queued in live jobs), 3 failed, 0 missing" in text
    assert "slurm job 4245_2 ended before running it" in text


@pytest.mark.parametrize("sacct_state, job", [("SUSPENDED", "live"), ("REQUEUE_HOLD", "live"), ("PREEMPTED", "live"),
                                             ("PENDING", "live"), ("CANCELLED by 0", "ended"), ("NODE_FAIL", "ended"),
                                             ("OUT_OF_MEMORY", "ended"), ("COMPLETED", "ended")])
def test_a_slurm_job_that_may_still_run_is_live(tmp_path, fake_slurm, sacct_state, job):
    """Only a final state ends a job: a suspended or held job resumes later, so its runs (and the
    locks it holds on them) must not be given to a new job."""
    (fake_slurm / "sacct.txt").write_text(f"JobID|State|NodeList\n4300_0|{sacct_state}|n1\n")
    rec = {"folder": str(tmp_path), "job_id": "4300_0", "launcher": "slurm", "host": "login1"}
    assert launch._job_states([rec]) == {(str(tmp_path), "4300_0"): job}
    submitit_done = SimpleNamespace(job_id="4300_0", done=lambda: True,  # submitit: any state but its few live ones
                                    paths=SimpleNamespace(result_pickle=tmp_path / "none.pkl"))
    assert launch._slurm_job_over(submitit_done) == (job == "ended")  # what --wait waits for


@pytest.mark.parametrize("flags, message", [
    (["--jobs", "2"], "--jobs needs --launcher local or slurm"),
    (["--launcher", "local", "--jobs", "0"], "--jobs 0: must be >= 1"),
    (["--partition", "gpu"], "--partition needs --launcher slurm"),
    (["--launcher", "local", "--wait"], "--wait needs --launcher slurm"),
    (["--launcher", "local", "--mem-gb", "8"], "--mem-gb needs --launcher slurm"),
    (["--launcher", "slurm", "--retries", "2"], "--retries with slurm needs --wait"),
    (["--launcher", "local", "--retries", "-1"], "--retries -1: must be >= 0"),
    (["--launcher", "local", "--device", "cuda:1"], "each job sees only its own GPU"),
    (["--launcher", "slurm", "--slurm-extra", "=x"], "expected KEY=VALUE"),
])
def test_bad_launcher_flags_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as e:
        grid.main(["--profile", "smoke_grid", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_local_jobs_are_pinned_to_the_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, GPU-1a2b")
    assert launch.visible_gpus("auto") == ("2", "GPU-1a2b") and launch.visible_gpus("cpu") == ()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launch.visible_gpus("auto") == ()
    words = launch._job_python("GPU-1a2b").split()
    assert words[:2] == ["env", "CUDA_VISIBLE_DEVICES=GPU-1a2b"] and words[-1] == sys.executable


def test_the_runs_an_ended_job_hands_on_go_before_the_jobs_not_started():
    from collections import deque
    queue = deque(["trainer C", "trainer D"])
    launch.put_first(queue, ["control A", "tuning A"])
    assert list(queue) == ["control A", "tuning A", "trainer C", "trainer D"]
