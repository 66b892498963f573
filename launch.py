"""Launchers: the plan's runs (:mod:`run_all_models`) as jobs of submitit's local or SLURM
executor, the jobs' records, the scheduler's view of them (sacct, squeue) and ``--status``.

A job is a GridJob: a list of configs run in turn. Runs that share a stage 1 which is not trained
yet are split so that no two jobs ever train the same stage 1 (plan_jobs): the first run is a job
of its own and trains it; the others wait for that job (local: submitted when it ends; SLURM:
--dependency=afterany) and then run one job each, in parallel, reading the cached stage 1.
Every job leaves a record <jobs folder>/<launch>/<job id>_runs.json of the runs it holds, which
is what --status and a rerun read to know what is running.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import pickle
import shlex
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from results_logger import now, read_json, write_json
from run_all_models import (add_outcome, check_plan, describe, new_report, order_for_sharing, run_key,
                            run_one, shares_stage1)
from runfiles import LockOwner, RunLock, lock_owner, lock_path, pid_alive, read_run_json
from two_stage_ictta import TwoStageConfig, config_hash, is_finished, made_by_other_code, run_name, stage1_path

ROOT = Path(__file__).resolve().parent
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # minutes; submitit's local default (2) would kill real runs
SLURM_TIMEOUT_MIN = 60 * 24  # minutes per job; on timeout or preemption the job is requeued and resumes
POLL_S = 0.5  # seconds between looks at the local jobs


@dataclasses.dataclass
class GridJob:
    """What one launcher job runs: ``configs`` in turn, each outcome reported, none stopping the rest.

    Submitit pickles this object for the job. With ``stage1_required`` the job only continues from a
    stage 1 that another job trained: a run whose stage-1 checkpoint is missing (that job failed)
    fails at once, retryable, instead of training it alongside someone else.
    """
    configs: list
    stage1_required: bool = False

    def __call__(self) -> list[dict]:
        try:  # submitit's "timed out too many times" must end the job, not only the run
            from submitit.core.utils import UncompletedJobError
        except ImportError:
            UncompletedJobError = ()
        outcomes = []
        for cfg in self.configs:
            if self.stage1_required and not stage1_path(cfg).exists():
                o = {"run": describe(cfg), "name": run_name(cfg), "status": "failed", "retryable": True,
                     "error": f"its stage 1 {stage1_path(cfg)} is missing: the job meant to train it failed"}
            else:
                o = run_one(cfg, passthrough=UncompletedJobError)
            print(f"{o['status']}: {o['run']}" + (f": {o['error']}" if "error" in o else ""), flush=True)
            outcomes.append(o)
        return outcomes

    def checkpoint(self):
        """Called by submitit on preemption or timeout: requeue this job as it is. Its finished runs
        are then skipped and the interrupted one resumes from its last epoch."""
        from submitit.helpers import DelayedSubmission
        return DelayedSubmission(self)


@dataclasses.dataclass
class JobSpec:
    """A job to submit: its runs, and the runs (``then``) that wait for it because they share the
    stage 1 it trains."""
    configs: list
    stage1_required: bool = False
    then: list = dataclasses.field(default_factory=list)
    attempt: int = 0  # resubmissions so far


@dataclasses.dataclass
class LaunchConfig:
    """How :func:`launch` runs a plan (the CLI's launcher flags)."""
    launcher: str = "local"  # local or slurm
    jobs: int | None = 1  # local: jobs at once; slurm: array tasks at once (None: submitit's 256)
    retries: int = 1  # resubmissions of a job that ended without reporting its runs (local, slurm+wait)
    gpus: tuple = ()  # local: GPU ids the jobs are pinned to, round-robin (none: CPU only)
    timeout_min: int | None = None  # minutes per job (default LOCAL_TIMEOUT_MIN / SLURM_TIMEOUT_MIN)
    partition: str | None = None  # slurm
    gpus_per_job: int = 1  # slurm
    mem_gb: float | None = None  # slurm
    slurm_extra: dict = dataclasses.field(default_factory=dict)  # slurm: more sbatch options
    wait: bool = False  # slurm: wait for the jobs, retry, and report as local does
    job_name: str = "ictta"  # slurm
    quiet: bool = False


def plan_jobs(configs: list[TwoStageConfig]) -> list[JobSpec]:
    """Jobs for ``configs`` such that no two jobs ever train the same stage 1: of runs sharing a
    stage 1 that is not cached yet, the first is a job that trains it and the rest wait for that
    job (``then``); every other run is a job of its own."""
    groups: dict[Path, list] = {}
    for cfg in configs:  # by the stage-1 checkpoint, which names the log_dir as well as the stage 1
        groups.setdefault(stage1_path(cfg), []).append(cfg)
    specs = []
    for group in groups.values():
        if len(group) > 1 and shares_stage1(group[0]) and not stage1_path(group[0]).exists():
            specs.append(JobSpec([group[0]], then=group[1:]))
        else:
            specs += [JobSpec([cfg]) for cfg in group]
    return specs


def visible_gpus(device: str = "auto") -> tuple[str, ...]:
    """The GPUs the local launcher pins its jobs to: the entries of ``$CUDA_VISIBLE_DEVICES`` when it
    is set (ids, UUIDs or MIG names), else ``0 .. n-1``; none when ``device`` is ``cpu``."""
    if device == "cpu":
        return ()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return tuple(t.strip() for t in env.split(",") if t.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask, which SLURM and containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _job_python(cuda_devices: str | None = None) -> str:
    """The job's interpreter as a command: this one, with the project on PYTHONPATH (the job unpickles
    GridJob and the configs by reference to these modules) and, for a local job, the GPU it is
    pinned to. ``env`` rather than submitit's visible_gpus, which takes integer ids only."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    pinned = [] if cuda_devices is None else [f"CUDA_VISIBLE_DEVICES={cuda_devices}"]
    return shlex.join(["env", *pinned, f"PYTHONPATH={pythonpath}", sys.executable])


def _grid_job(configs, stage1_required=False):
    """A GridJob of this module (never a class of ``__main__``, which the job could not import)."""
    return GridJob(list(configs), stage1_required)


def _write_record(folder: Path, job_id: str, launcher: str, spec: JobSpec, after: str | None = None) -> None:
    write_json(folder / f"{job_id}_runs.json",
               {"job_id": job_id, "launcher": launcher, "host": socket.gethostname(), "submitted": time.time(),
                "after": after, "stage1_required": spec.stage1_required,
                "runs": [run_key(c) for c in spec.configs]})


def _read_records(jobs_dir: Path) -> list[dict]:
    records = []
    for path in Path(jobs_dir).glob("*/*_runs.json"):
        rec = read_json(path)
        if rec is not None:
            records.append({**rec, "folder": str(path.parent)})
    return sorted(records, key=lambda r: r["submitted"])


# SLURM job states after which the job never runs again (sacct's; GONE: sacct and squeue do not know it)
SLURM_FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                      "DEADLINE", "REVOKED", "GONE")


def _local_job_alive(pid: int) -> bool:
    if not pid_alive(pid):
        return False
    try:  # a recycled pid belongs to some other program
        return b"submitit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # no /proc (or a zombie): trust the pid
        return True


def _slurm_states(job_ids: list[str]) -> dict[str, str]:
    """The scheduler's state of each job: sacct's (through submitit); for a job sacct does not know
    (purged from accounting), PENDING if squeue lists it, else GONE; UNKNOWN if neither can tell."""
    from submitit.slurm.slurm import SlurmInfoWatcher, read_job_id

    watcher = SlurmInfoWatcher()
    for jid in job_ids:
        watcher.register_job(jid)
    watcher.update()
    states = {jid: watcher.get_state(jid, mode="cache") for jid in job_ids}
    if any(state == "UNKNOWN" for state in states.values()):
        try:
            lines = subprocess.run(["squeue", "-h", "-o", "%i", "-u", getpass.getuser()], capture_output=True,
                                   text=True, timeout=60, check=True).stdout.split()
        except (OSError, subprocess.SubprocessError):
            return states
        queued = set()
        for line in lines:  # 123, 123_4, or 123_[0-7%2] for an array's waiting tasks
            for main, *index in read_job_id(line):
                queued.add(main)
                queued.update(f"{main}_{i}" for i in range(int(index[0]), int(index[-1]) + 1) if index)
        states = {jid: ("PENDING" if jid in queued else "GONE") if state == "UNKNOWN" else state
                  for jid, state in states.items()}
    return states


def _job_states(records: list[dict]) -> dict[tuple, str]:
    """``live``, ``ended`` or ``unknown`` for each job record.

    ended: submitit wrote its result file (the job returned or raised), or its process is gone
    (local, same host), or SLURM reports a final state (:data:`SLURM_FINAL_STATES`), or sacct
    does not know it and squeue does not list it. live: its process runs (local), or SLURM reports
    any other state (PENDING, RUNNING, SUSPENDED, REQUEUE_HOLD, PREEMPTED, ...: a job that may
    still run keeps its lock). unknown: a local job of another host, or a SLURM job when neither
    sacct nor squeue answers (not on the cluster?).
    """
    states, slurm = {}, []
    for rec in records:
        key = (rec["folder"], rec["job_id"])
        if (Path(rec["folder"]) / f"{rec['job_id']}_0_result.pkl").exists():
            states[key] = "ended"
        elif rec["launcher"] == "local":
            if rec["host"] != socket.gethostname():
                states[key] = "unknown"
            else:
                states[key] = "live" if _local_job_alive(int(rec["job_id"])) else "ended"
        else:
            slurm.append(rec)
    if slurm:
        scheduler = _slurm_states(sorted({r["job_id"] for r in slurm}))
        for rec in slurm:
            states[(rec["folder"], rec["job_id"])] = _slurm_state_kind(scheduler.get(rec["job_id"], "UNKNOWN"))
    return states


def _slurm_state_kind(state: str) -> str:
    """``unknown``, ``ended`` (a final state) or ``live`` (any other: it may still run) for a
    state as sacct or :func:`_slurm_states` gives it."""
    word = state.upper().split(" ")[0]  # sacct says "CANCELLED by 0"
    return "unknown" if word == "UNKNOWN" else "ended" if word in SLURM_FINAL_STATES else "live"


def _slurm_job_over(job) -> bool:
    """submitit's ``job.done()``, except that a job in a state that is not final (SUSPENDED, held)
    is not over: it may run again, and must keep its runs."""
    if not job.done():
        return False
    if job.paths.result_pickle.exists():
        return True
    return _slurm_state_kind(_slurm_states([str(job.job_id)]).get(str(job.job_id), "UNKNOWN")) != "live"


def _reported_failure(rec: dict, name: str) -> str | None:
    """Why an ended job says run ``name`` failed, from submitit's result file; None if it does not."""
    try:  # the outcomes are plain data: no need for the job's classes
        with (Path(rec["folder"]) / f"{rec['job_id']}_0_result.pkl").open("rb") as f:
            kind, value = pickle.load(f)
    except Exception:  # no result file, or an unreadable one
        return None
    if kind == "error":  # GridJob itself raised; value is the traceback
        return f"{rec['launcher']} job {rec['job_id']} failed: {value.strip().splitlines()[-1]}"
    return next((o["error"] for o in value if o["name"] == name and o["status"] == "failed"), None)


def grid_status(configs: list[TwoStageConfig], jobs_dir: str | Path) -> dict:
    """Each run of the plan as done, running, failed or missing, from its result files, its lock
    and the launcher's job records in ``jobs_dir``; the first rule that holds decides:

    1. done: its JSON says finished, for these settings, and its CSV exists (what a rerun skips);
    2. running, in progress: its lock file is held: by a live process if the lock was taken on this
       host; taken on another host, unless the run's last launcher job took it and has ended;
    3. running, queued: the last job it was submitted in is live, or its state is unknown;
    4. failed: its files hold a run with other settings; or it finished, but by other code (a
       launch reruns it; ``accept_code_change`` keeps it); or its JSON says failed or interrupted;
       or it started (JSON "running", or a lock left behind) and nobody holds its lock (killed); or
       its last job ended without finishing it;
    5. missing: none of these (never started, never submitted).
    """
    records = _read_records(Path(jobs_dir))
    latest = {run: rec for rec in records for run in rec["runs"]}  # records are in submission order
    states = _job_states(list({(r["folder"], r["job_id"]): r for r in latest.values()}.values()))
    me = socket.gethostname()
    runs = []
    for cfg in configs:
        name, log_dir = run_name(cfg), Path(cfg.log_dir)
        meta = read_run_json(log_dir, name)
        rec = latest.get(run_key(cfg))
        job = states[(rec["folder"], rec["job_id"])] if rec else None
        where = f"{rec['launcher']} job {rec['job_id']}" if rec else ""
        owner = lock_owner(lock_path(log_dir, name))
        state, detail = "missing", "never started"
        if is_finished(cfg, meta):
            state, detail = "done", ""
        elif owner and (owner.alive_here() if owner.host == me else not _left_by_ended_job(owner, rec, job)):
            state, detail = "running", _holder(owner, rec, where, lock_path(log_dir, name))
        elif job in ("live", "unknown"):
            state, detail = "running", f"queued in {where}" + (" (job state unknown)" if job == "unknown" else "")
        elif meta is not None and meta.get("run_id") != config_hash(cfg) and (log_dir / f"{name}.csv").exists():
            state, detail = "failed", f"its files hold a run with other settings (run_id {meta.get('run_id')})"
        elif meta is not None and meta.get("status") == "finished" and (stale := made_by_other_code(meta, cfg)):
            state, detail = "failed", f"finished, but {stale}; a launch reruns it"
        elif meta is not None and meta.get("status") in ("failed", "interrupted"):
            state, detail = "failed", meta.get("error") or meta["status"]
        elif owner or (meta is not None and meta.get("status") == "running"):
            state, detail = "failed", "killed: it started but no live process holds its lock" + (
                f" ({where} ended)" if rec else "")
        elif rec:
            state, detail = "failed", _reported_failure(rec, name) or f"{where} ended before running it"
        runs.append({"run": describe(cfg), "name": name, "state": state, "detail": detail,
                     "lock": owner, "job": rec and rec["job_id"]})
    counts = {k: sum(r["state"] == k for r in runs) for k in ("done", "running", "failed", "missing")}
    return {"total": len(runs), "counts": counts, "runs": runs, "jobs_dir": str(jobs_dir),
            "queued": sum(r["detail"].startswith("queued") for r in runs),
            "unknown_jobs": sorted(k[1] for k, v in states.items() if v == "unknown")}


def _left_by_ended_job(owner: LockOwner, rec: dict | None, job: str | None) -> bool:
    """Whether another host's lock was taken by the run's last launcher job, which has ended. A
    lock of any other process there (a later launcher's job, a run started by hand) may be live."""
    return rec is not None and owner.job == rec["job_id"] and job == "ended"


def _holder(owner: LockOwner, rec: dict | None, where: str, lock: Path) -> str:
    """The ``--status`` detail of a run whose lock is held: by whom, and how to free a lock that
    this launcher cannot judge."""
    if owner.pid < 0:
        return f"its lock cannot be read; if no process writes this run, delete {lock}"
    detail = f"in progress: pid {owner.pid} on {owner.host}"
    if owner.host == socket.gethostname() or (rec and owner.job == rec["job_id"]):
        return detail + (f" ({where})" if rec else "")
    holder = f"job {owner.job}" if owner.job != "-" else "the lock names no launcher job"
    return f"{detail} ({holder}; if that process has ended, delete {lock})"


def format_status(status: dict) -> str:
    c = status["counts"]
    lines = [f"{status['total']} runs: {c['done']} done, {c['running']} running "
             f"({c['running'] - status['queued']} in progress, {status['queued']} queued in live jobs), "
             f"{c['failed']} failed, {c['missing']} missing"]
    lines += [f"  {r['state']:7} {r['run']}: {r['detail']}" for r in status["runs"] if r["state"] in ("running", "failed")]
    if status["unknown_jobs"]:
        lines.append(f"  note: the state of jobs {', '.join(status['unknown_jobs'])} is unknown (neither sacct nor "
                     f"squeue answered, or local jobs of another host): their runs count as running")
    return "\n".join(lines)


def _job_outcomes(job, spec: JobSpec) -> list[dict]:
    """The outcome of each run of a job that has ended. A job that ended without reporting them
    (killed, out of memory, node failure, timed out too often) leaves its unfinished runs failed and
    retryable."""
    if job.paths.result_pickle.exists():
        try:
            return job.result()
        except Exception as e:  # GridJob itself raised: all but its last lines are submitit's traceback
            reason = f"job {job.job_id} failed: {str(e).strip().splitlines()[-1][:300]}; log: {job.paths.stderr}"
    else:
        reason = (f"job {job.job_id} ended without a result (killed, out of memory or node failure?); "
                  f"log: {job.paths.stderr}")
    outcomes = []
    for cfg in spec.configs:
        meta = read_run_json(cfg.log_dir, run_name(cfg))
        if is_finished(cfg, meta):
            outcomes.append({"run": describe(cfg), "name": run_name(cfg), "status": "done",
                             "resumed_from": meta["results"].get("resumed_from")})
        else:
            outcomes.append({"run": describe(cfg), "name": run_name(cfg), "status": "failed", "error": reason,
                             "retryable": True})
    return outcomes


def _finish(job, spec: JobSpec, retries: int, report: dict, quiet: bool) -> list[JobSpec]:
    """Record an ended job's outcomes; return the jobs to submit next: its retryable runs again
    (while retries are left), or else the runs that waited for it."""
    outcomes = _job_outcomes(job, spec)
    retry = [cfg for cfg, o in zip(spec.configs, outcomes) if o.get("retryable")] if spec.attempt < retries else []
    for o in outcomes:
        if o.get("retryable") and retry:
            report["retried"].append(f"{o['run']} ({o['error']})")
        else:
            add_outcome(report, o)
    if not quiet:
        print(f"job {job.job_id} ended: " + ", ".join(f"{o['status']} {o['run']}" for o in outcomes)
              + (" (resubmitting)" if retry else ""), flush=True)
    if retry:
        return [JobSpec(retry, spec.stage1_required, spec.then, spec.attempt + 1)]
    if any(o["status"] == "locked" for o in outcomes):  # another process may be training their stage 1
        waiting = [cfg for cfg in spec.then if not stage1_path(cfg).exists()]
        report["deferred"] += [describe(cfg) for cfg in waiting]
        return plan_jobs([cfg for cfg in spec.then if cfg not in waiting])
    return plan_jobs(spec.then)


def put_first(queue: deque, specs: list[JobSpec]) -> None:
    """Queue the jobs an ended job hands on (its retries, or the runs that waited for its stage 1)
    ahead of the jobs not started yet, in their order: a two-stage run's same-budget control runs
    next, so that finished pairs accumulate while a long grid runs, instead of every control
    waiting for the last stage-1 trainer."""
    queue.extendleft(reversed(specs))


def _launch_local(specs: list[JobSpec], lc: LaunchConfig, folder: Path, report: dict) -> None:
    """Run the jobs as local subprocesses, ``lc.jobs`` at a time; slot ``k`` is pinned to GPU
    ``lc.gpus[k % len(lc.gpus)]``, or to no GPU when there are none."""
    import submitit

    queue, live = deque(specs), {}  # live: slot -> (job, spec)
    try:
        while queue or live:
            while queue and len(live) < lc.jobs:
                slot = min(set(range(lc.jobs)) - set(live))
                spec = queue.popleft()
                ex = submitit.LocalExecutor(folder, python=_job_python(lc.gpus[slot % len(lc.gpus)] if lc.gpus else ""))
                ex.update_parameters(timeout_min=lc.timeout_min or LOCAL_TIMEOUT_MIN)
                job = ex.submit(_grid_job(spec.configs, spec.stage1_required))
                _write_record(folder, job.job_id, "local", spec)
                report["jobs"].append(job.job_id)
                live[slot] = (job, spec)
                if not lc.quiet:
                    print(f"job {job.job_id} started" + (f" on GPU {lc.gpus[slot % len(lc.gpus)]}" if lc.gpus else "")
                          + ": " + ", ".join(describe(c) for c in spec.configs), flush=True)
            time.sleep(POLL_S)
            for slot, (job, spec) in list(live.items()):
                if job.done():
                    del live[slot]
                    put_first(queue, _finish(job, spec, lc.retries, report, lc.quiet))
    except KeyboardInterrupt:  # stop the jobs too (their runs are marked interrupted and resume later)
        for job, _ in live.values():
            job.cancel(check=False)
        deadline = time.time() + 30
        while time.time() < deadline and not all(job.done() for job, _ in live.values()):
            time.sleep(POLL_S)
        raise


def _submit_slurm(specs: list[JobSpec], lc: LaunchConfig, folder: Path, report: dict) -> list[tuple]:
    """Submit the jobs to SLURM as job arrays: one array of the jobs that can start now, and per
    stage-1 trainer one array of the runs waiting for it (``--dependency=afterany:<its job>``)."""
    import submitit

    ex = submitit.SlurmExecutor(folder, python=_job_python())
    mem = lc.mem_gb and (f"{int(lc.mem_gb)}GB" if lc.mem_gb == int(lc.mem_gb) else f"{round(lc.mem_gb * 1024)}MB")
    params = dict(job_name=lc.job_name, time=lc.timeout_min or SLURM_TIMEOUT_MIN,
                  partition=lc.partition, mem=mem, gpus_per_node=lc.gpus_per_job or None,
                  array_parallelism=lc.jobs, additional_parameters=lc.slurm_extra or None)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})

    def submit(batch: list[JobSpec], after: str | None = None) -> list:
        ex.update_parameters(dependency=f"afterany:{after}" if after else None)
        jobs = ex.submit_array([_grid_job(s.configs, s.stage1_required) for s in batch])
        for job, spec in zip(jobs, batch):
            _write_record(folder, job.job_id, "slurm", spec, after)
            report["jobs"].append(job.job_id)
            report["submitted"] += [describe(c) for c in spec.configs]
        return jobs

    firsts = [dataclasses.replace(s, then=[]) for s in specs]
    submitted = list(zip(submit(firsts), firsts))
    for spec, (head, _) in zip(specs, list(submitted)):
        if spec.then:
            waiting = [JobSpec([cfg], stage1_required=True) for cfg in spec.then]
            submitted += zip(submit(waiting, after=head.job_id), waiting)
    if not lc.quiet:
        ids = sorted({str(j.job_id).split("_")[0] for j, _ in submitted})
        print(f"submitted {len(report['submitted'])} runs in {len(submitted)} SLURM jobs (job ids {', '.join(ids)}); "
              f"job folder {folder}", flush=True)
    return submitted


def drop_other_hosts_lock(cfg: TwoStageConfig, seen: LockOwner | None, ended_job: str | None) -> None:
    """Delete the lock ``seen`` on ``cfg``'s run if launcher job ``ended_job``, which has ended,
    took it on another host, and the lock still reads so (another launcher's job may have taken it
    since). Another host's process cannot be checked from here, so a lock that some other process
    took there stays; a lock of this host is judged by its process."""
    if seen and seen.host != socket.gethostname() and seen.job == ended_job:
        RunLock(lock_path(cfg.log_dir, run_name(cfg))).remove_if_unchanged(seen.text)


def _launch_slurm(specs: list[JobSpec], lc: LaunchConfig, folder: Path, report: dict) -> None:
    """Submit; with ``lc.wait``, wait for the jobs, resubmit the retryable runs (``lc.retries``
    rounds) and fill the report as the local launcher does."""
    for round_ in range(lc.retries + 1 if lc.wait else 1):
        submitted = _submit_slurm(specs, lc, folder, report)
        if not lc.wait:
            return
        while not all(_slurm_job_over(job) for job, _ in submitted):
            time.sleep(10 * POLL_S)
        retry = []
        for job, spec in submitted:
            outcomes = _job_outcomes(job, spec)
            for cfg, o in zip(spec.configs, outcomes):
                if o.get("retryable") and round_ < lc.retries:
                    report["retried"].append(f"{o['run']} ({o['error']})")
                    retry.append((cfg, job.job_id))
                else:
                    add_outcome(report, o)
        report["submitted"] = []
        if not retry:
            return
        for cfg, dead_job in retry:  # the node that died left its lock: the retry may land elsewhere
            drop_other_hosts_lock(cfg, lock_owner(lock_path(cfg.log_dir, run_name(cfg))), dead_job)
        specs = plan_jobs([cfg for cfg, _ in retry])


def launch(configs: list[TwoStageConfig], lc: LaunchConfig, jobs_dir: str | Path,
           report_path: str | Path | None = None) -> dict:
    """Run the plan's unfinished runs as jobs of submitit's local or SLURM executor.

    From :func:`grid_status`: a done run is skipped and never submitted; a running one (lock held,
    or in a live job) is left to its job; a failed or missing run is submitted, unless it needs a
    stage 1 that a live job is training now (deferred). A lock that the run's last job took on
    another host, that job having ended, is deleted first. Returns, and writes to
    ``report_path``, the end report.
    """
    check_plan(configs)
    jobs_dir = Path(jobs_dir)
    report = new_report(launcher=lc.launcher, jobs=[], submitted=[], running=[], deferred=[], retried=[])
    status = grid_status(configs, jobs_dir)
    busy = {stage1_path(cfg) for cfg, r in zip(configs, status["runs"]) if r["state"] == "running"}
    todo = []
    for cfg, r in zip(configs, status["runs"]):
        if r["state"] == "done":
            report["skipped"].append(r["run"])
        elif r["state"] == "running":
            report["running"].append(f"{r['run']} ({r['detail']})")
        elif stage1_path(cfg) in busy and shares_stage1(cfg) and not stage1_path(cfg).exists():
            report["deferred"].append(r["run"])
        else:
            drop_other_hosts_lock(cfg, r["lock"], r["job"])  # left by the run's last job, ended (rule 2)
            todo.append(cfg)
    specs = plan_jobs(order_for_sharing(todo))
    if specs:
        folder = jobs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # this launch's submitit folder
        (_launch_local if lc.launcher == "local" else _launch_slurm)(specs, lc, folder, report)
    report["finished"] = now()
    if report_path is not None:
        write_json(report_path, report)
    return report
