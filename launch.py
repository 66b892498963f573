"""Launchers: the plan's runs executed inline, as local subprocesses, or as SLURM jobs.

* ``inline`` (:func:`run_grid`): the runs one after another in this process.
* ``local`` and ``slurm`` (:func:`launch`, through submitit): each run a job. A job is a GridJob: a
  list of configs run in turn. Runs that share a stage 1 which is not trained yet are split so that
  no two jobs ever train the same stage 1 (:func:`plan_jobs`): the run furthest into it is a job of
  its own and trains it; the others wait (local: submitted once that job has written the stage 1;
  SLURM: ``--dependency=afterany``, when it ends) and then run one job each, in parallel, reading it.
  Locally, if that job fails before writing it (and is not retried), the first of them trains it
  instead; under SLURM they fail at once, retryable, and a rerun trains it.
  Every job leaves a record ``<jobs folder>/<launch>/<job id>_runs.json`` of the runs it holds,
  which ``--status`` and a rerun read to know what is running.

The local launcher pins each job to one GPU (round-robin), starts NVIDIA's multi-process service
when several jobs share a GPU, and stops cleanly at a time budget (``budget_min``): its jobs are
interrupted, each keeps its last epoch's checkpoint, and the same command resumes them.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import pickle
import shlex
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections import Counter, deque
from pathlib import Path

from tqdm.auto import tqdm

from config import (TwoStageConfig, config_hash, made_by_other_code, run_name, settings_changed, stage1_hash,
                    stage1_path, validate_config)
from data_loader import find_dataset, load_dataset, make_split
from estimate import run_seconds
from results_logger import COMMAND_ENV, now, read_json, run_command, write_json
from runfiles import LockOwner, RunLock, RunLockedError, lock_owner, lock_path, pid_alive, read_run_json, run_paths
from two_stage_ictta import (data_read_elsewhere, gives_way_to_shared_stage1, has_current_stage1, is_finished,
                             load_checkpoint, run_two_stage)

ROOT = Path(__file__).resolve().parent
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # minutes; submitit's local default (2) would kill real runs
SLURM_TIMEOUT_MIN = 60 * 24  # minutes per job; on timeout or preemption the job is requeued and resumes
POLL_S = 0.5  # seconds between looks at the local jobs


# ----------------------------------------------------------------------------------------------
# The runs of a plan, and the inline launcher

def shares_stage1(cfg: TwoStageConfig) -> bool:
    """Whether ``cfg`` reads or writes the shared stage-1 checkpoint of its log_dir."""
    return cfg.reuse_stage1 and cfg.stage1_epochs > 0


def order_for_sharing(configs: list[TwoStageConfig]) -> list[TwoStageConfig]:
    """Stable order in which runs sharing a stage 1 are adjacent: the first trains it, the rest reuse
    it. Where several share one, the first is the one furthest into it by its own checkpoint, so
    that no run trains it from scratch while the others wait and one of them could go on; a run
    already in stage 2 writes no stage 1 and comes last."""
    first_seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        first_seen.setdefault(stage1_hash(cfg), i)
    sharers = Counter(stage1_hash(c) for c in configs if shares_stage1(c))
    progress = {id(c): stage1_epochs_done(c) if sharers[stage1_hash(c)] > 1 and shares_stage1(c) else 0
                for c in configs}
    return sorted(configs, key=lambda c: (first_seen[stage1_hash(c)], -progress[id(c)]))


def stage1_epochs_done(cfg: TwoStageConfig) -> int:
    """Epochs of stage 1 that a run's own checkpoint holds while it is in stage 1; 0 without one;
    -1 when it is in stage 2."""
    point = resume_point(cfg)
    return 0 if point is None else point[1] if point[0] == 1 else -1


def describe(cfg: TwoStageConfig) -> str:
    return f"{cfg.tag} {cfg.exp_name or cfg.method} {cfg.model_name}/{cfg.imbalance_type}@{cfg.imb_factor:g} seed{cfg.seed}"


def check_plan(configs: list[TwoStageConfig], fetch: bool = True) -> dict:
    """Raise ``ValueError`` for the first invalid config or missing dataset, before any work starts;
    return the dataset of each (data_root, dataset) pair (downloaded where allowed, see
    ``data_loader.load_dataset``).
    With ``fetch=False`` nothing is downloaded and a missing dataset is None, not an error."""
    for cfg in configs:
        validate_config(cfg)  # a typo fails here, before hours of work, not at run 57
    sources = {(c.data_root, c.dataset, c.download) for c in configs}
    if not fetch:
        return {(root, name): find_dataset(root, name, write_cache=False) for root, name, _ in sources}
    # so does missing data (a DataError, a ValueError); this also fills the decoded-image cache
    return {(root, name): load_dataset(root, download, name) for root, name, download in sources}


STEP_UNITS = {"step_s": 1.0, "eval_image_s": 0.0}  # without timings, a run's work counts in steps


def plan_work(configs: list[TwoStageConfig], datasets: dict) -> list[dict]:
    """Each run of ``configs``, in the order given (the order they run in): ``finished`` (a rerun
    skips it); ``resume_from``, the (stage, epoch) of its own checkpoint that it goes on from, or
    None; ``trains_stage1`` (epochs of stage 1 are left to it, and no earlier unfinished run of the
    plan and no checkpoint on disk provides its stage 1); ``sizes`` (its train, val, test, stat
    image counts, None without data); and ``steps``, the training steps left to it."""
    provided, work = set(), []
    for cfg in configs:
        meta = read_run_json(cfg.log_dir, run_name(cfg))
        finished = is_finished(cfg, meta)
        shared = shares_stage1(cfg) and (stage1_path(cfg) in provided or has_current_stage1(cfg))
        resume_from = None if finished else resume_point(cfg)
        trains_stage1 = not finished and cfg.stage1_epochs > 0 and (
            not shared if resume_from is None else resume_from[0] == 1 and resume_from[1] < cfg.stage1_epochs)
        if not finished and shares_stage1(cfg) and (resume_from is None or resume_from[0] == 1):
            provided.add(stage1_path(cfg))  # once its stage 1 ends; one resumed in stage 2 shared it before
        data = datasets.get((cfg.data_root, cfg.dataset))
        sizes = _split_sizes(cfg, data) if data is not None else None
        work.append({"cfg": cfg, "finished": finished, "read_elsewhere": finished and data_read_elsewhere(cfg, meta),
                     "trains_stage1": trains_stage1, "resume_from": resume_from, "sizes": sizes,
                     "steps": sizes and run_seconds(cfg, sizes, STEP_UNITS, trains_stage1, resume_from)})
    return work


def resume_point(cfg: TwoStageConfig) -> tuple[int, int] | None:
    """The (stage, last finished epoch) that a run of ``cfg`` goes on from, as the run itself
    decides: its own checkpoint, of these settings and made by this code (or accepted with
    ``accept_code_change``); None without one, where it cannot be read (the run then says why), or
    where it is partway through stage 1 and the shared stage 1 is finished (the run goes on from
    that one)."""
    path = run_paths(cfg.log_dir, run_name(cfg))["checkpoint"]
    if not cfg.resume or not path.exists():
        return None
    try:
        snap = load_checkpoint(path)
    except ValueError:
        return None
    if snap.get("run_id") != config_hash(cfg) or made_by_other_code(snap, cfg) is not None:
        return None
    if gives_way_to_shared_stage1(cfg, snap["st"]):
        return None
    return snap["st"]["stage"], snap["st"]["epoch"]


def epoch_reached(cfg: TwoStageConfig, resume_from: tuple[int, int]) -> str:
    """``epoch 163 of 160 + 40``: a checkpoint's (stage, epoch) counted over both stages."""
    stage, epoch = resume_from
    return f"epoch {epoch + (cfg.stage1_epochs if stage == 2 else 0)} of {cfg.stage1_epochs} + {cfg.stage2_epochs}"


def _split_sizes(cfg: TwoStageConfig, data) -> dict:
    """Image counts of ``cfg``'s splits; they do not depend on the seed."""
    split = make_split(data.train_y, cfg.imbalance_type, cfg.imb_factor, n_max=cfg.n_max,
                       val_per_class=cfg.val_per_class, stat_per_class=cfg.stat_per_class)
    return {"train": len(split.train_idx), "val": len(split.val_idx), "stat": len(split.stat_idx),
            "test": len(data.test_y)}


def run_key(cfg: TwoStageConfig) -> str:
    """A run's key across processes and hosts: its log_dir, resolved, and its name."""
    return str(Path(cfg.log_dir).resolve() / run_name(cfg))


class GridProgress:
    """One bar over a whole plan, with its ETA: each run counts as its estimated seconds (or, not
    timed, its training steps), so the bar moves with the work done, not the number of runs."""

    def __init__(self, work: list[dict], quiet: bool = False):
        self.cost = {run_key(w["cfg"]): w.get("seconds", w["steps"]) or 0.0 for w in work if not w["finished"]}
        self.runs, self.done = len(work), 0
        self.bar = tqdm(total=sum(self.cost.values()) or 1.0, desc="grid", disable=quiet, dynamic_ncols=True,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}")

    def start(self, cfg: TwoStageConfig) -> None:
        self.bar.set_postfix_str(f"run {self.done + 1}/{self.runs}: {describe(cfg)}")

    def finish(self, cfg: TwoStageConfig) -> None:
        self.done += 1
        self.bar.update(self.cost.pop(run_key(cfg), 0.0))

    def close(self) -> None:
        self.bar.close()


def run_one(cfg: TwoStageConfig, quiet: bool = False, passthrough=()) -> dict:
    """Run one config; its outcome: ``status`` done, skipped (finished before), locked (another
    process holds its lock) or failed (with the error). A failing run never stops the caller;
    exceptions of type ``passthrough`` do."""
    out = {"run": describe(cfg), "name": run_name(cfg)}
    try:
        res = run_two_stage(dataclasses.replace(cfg, quiet=quiet or cfg.quiet))
    except passthrough:
        raise
    except RunLockedError as e:  # another process is on it: not a failure of this call
        return {**out, "status": "locked", "error": str(e)}
    except Exception as e:
        if not isinstance(e, (ValueError, FloatingPointError, RuntimeError, OSError)):
            traceback.print_exc()  # a bug: its traceback is what a report needs
        return {**out, "status": "failed", "error": f"{type(e).__name__}: {e}"}
    if res.get("skipped"):
        return {**out, "status": "skipped"}
    return {**out, "status": "done", "resumed_from": res.get("resumed_from")}


def new_report(**extra) -> dict:
    return {"done": [], "skipped": [], "resumed": [], "failed": [], "locked": [], **extra,
            "started": now()}


def add_outcome(report: dict, o: dict) -> None:
    if o["status"] == "failed":
        report["failed"].append({"run": o["run"], "error": o["error"]})
    elif o["status"] == "locked":
        report["locked"].append(f"{o['run']} ({o['error']})")
    elif o["status"] == "skipped":
        report["skipped"].append(o["run"])
    else:
        report["done"].append(o["run"])
        if o.get("resumed_from"):
            stage, epoch = o["resumed_from"]
            report["resumed"].append(f"{o['run']} (from stage {stage} epoch {epoch})")


def run_grid(configs: list[TwoStageConfig], quiet: bool = False, report_path: str | Path | None = None,
             progress: GridProgress | None = None) -> dict:
    """Run every config in turn (inline), never stopping at a failure; return and write a report
    of the runs done, skipped (finished before), resumed and failed, with the reasons. ``progress``
    is a bar over a larger plan that these runs are part of; without it they get their own."""
    datasets = check_plan(configs)
    configs = order_for_sharing(configs)
    bar = progress or GridProgress(plan_work(configs, datasets), quiet)
    report = new_report()
    for cfg in configs:
        bar.start(cfg)
        o = run_one(cfg, quiet)
        bar.finish(cfg)
        if o["status"] == "failed":
            tqdm.write(f"FAILED {o['run']}: {o['error']}")
        add_outcome(report, o)
    if progress is None:
        bar.close()
    report["finished"] = now()
    if report_path is not None:
        write_json(report_path, report)
    return report


def format_report(report: dict) -> str:
    lines = [f"grid: {len(report['done'])} done ({len(report['resumed'])} resumed), "
             f"{len(report['skipped'])} skipped (finished before), {len(report['failed'])} failed"
             + (f", {len(report['locked'])} left to other processes" if report.get("locked") else "")]
    if "jobs" in report:  # a launcher's report
        lines[0] += f"; {len(report['jobs'])} {report['launcher']} jobs"
        for key, what in (("submitted", "submitted, not finished yet (see --status)"),
                          ("running", "left to live jobs or processes (not submitted again)"),
                          ("deferred", "deferred: their stage 1 is being trained by a live job; rerun once it is written"),
                          ("retried", "resubmitted after their job died")):
            if report[key]:
                lines.append(f"  {len(report[key])} {what}")
                lines += [f"    {r}" for r in report[key][:20]] + (["    ..."] if len(report[key]) > 20 else [])
    lines += [f"  resumed: {r}" for r in report["resumed"]]
    lines += [f"  left to the process that holds its lock: {r}" for r in report.get("locked", [])]
    lines += [f"  FAILED {f['run']}: {f['error']}" for f in report["failed"]]
    if report.get("stopped"):
        st = report["stopped"]
        lines.append(f"  stopped at the time budget ({st['budget_min']:g} min): {len(st['interrupted'])} runs "
                     f"interrupted (each resumes from its last finished epoch), {len(st['not_started'])} not "
                     f"started; the same command again goes on")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Jobs: the local and SLURM launchers

@dataclasses.dataclass
class GridJob:
    """What one launcher job runs: ``configs`` in turn, each outcome reported, none stopping the rest.

    Submitit pickles this object for the job. With ``stage1_required`` the job only continues from a
    stage 1 that another job trained: a run whose stage-1 checkpoint is missing (that job failed)
    fails at once, retryable, instead of training it alongside someone else.
    """
    configs: list
    stage1_required: bool = False
    command: str = dataclasses.field(default_factory=run_command)  # the launcher's, recorded in each run

    def __call__(self) -> list[dict]:
        os.environ[COMMAND_ENV] = self.command
        try:  # submitit's "timed out too many times" must end the job, not only the run
            from submitit.core.utils import UncompletedJobError
        except ImportError:
            UncompletedJobError = ()
        outcomes = []
        for cfg in self.configs:
            if self.stage1_required and not has_current_stage1(cfg):
                o = {"run": describe(cfg), "name": run_name(cfg), "status": "failed", "retryable": True,
                     "error": f"its stage 1 {stage1_path(cfg)} is missing or stale: the job meant to train it failed"}
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
    budget_min: float | None = None  # local: stop cleanly after this many minutes; a rerun resumes


def plan_jobs(configs: list[TwoStageConfig]) -> list[JobSpec]:
    """Jobs for ``configs`` such that no two jobs ever train the same stage 1: of runs sharing a
    stage 1 that is not cached yet, the first is a job that trains it and the rest wait for that
    job (``then``); every other run is a job of its own."""
    groups: dict[Path, list] = {}
    for cfg in configs:  # by the stage-1 checkpoint, which names the log_dir as well as the stage 1
        groups.setdefault(stage1_path(cfg) if shares_stage1(cfg) else id(cfg), []).append(cfg)
    specs = []
    for group in groups.values():
        if len(group) > 1 and not has_current_stage1(group[0]):
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
            if detail.startswith("in progress") and (at := resume_point(cfg)):
                detail = detail.replace("in progress", f"in progress, {epoch_reached(cfg, at)} done", 1)
        elif job in ("live", "unknown"):
            state, detail = "running", f"queued in {where}" + (" (job state unknown)" if job == "unknown" else "")
        elif meta is not None and meta.get("run_id") != config_hash(cfg) and (log_dir / f"{name}.csv").exists():
            changed = settings_changed(meta.get("config") or {}, cfg) or f"run_id {meta.get('run_id')}"
            state, detail = "failed", f"its files hold a run with other settings ({changed})"
        elif meta is not None and meta.get("status") == "finished" and (stale := made_by_other_code(meta, cfg)):
            state, detail = "failed", f"finished, but {stale}; a launch reruns it"
        elif meta is not None and meta.get("status") in ("failed", "interrupted"):
            state, detail = "failed", meta.get("error") or meta["status"]
        elif owner or (meta is not None and meta.get("status") == "running"):
            at = resume_point(cfg)
            state, detail = "failed", "killed: it started but no live process holds its lock" + (
                f" ({where} ended)" if rec else "")
            if at:
                detail += f"; a launch goes on after {epoch_reached(cfg, at)}"
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
        waiting = [cfg for cfg in spec.then if not has_current_stage1(cfg)]
        report["deferred"] += [describe(cfg) for cfg in waiting]
        return plan_jobs([cfg for cfg in spec.then if cfg not in waiting])
    return plan_jobs(spec.then)


def hand_on_written_stage1(live: dict, queue: deque, seen: dict) -> None:
    """Queue first the runs waiting for a live job's stage 1 once that job has written it (a current
    one), instead of when the job ends; the job goes on without them. ``seen`` holds each stage-1
    file's last modification time, so that a file is read only when it changed."""
    for slot, (job, spec) in list(live.items()):
        if spec.then and _changed(stage1_path(spec.configs[0]), seen) and _is_current(spec.configs[0]):
            put_first(queue, plan_jobs(spec.then))
            live[slot] = (job, dataclasses.replace(spec, then=[]))


def _changed(path: Path, seen: dict) -> bool:
    """Whether ``path`` exists and was modified since ``seen`` last recorded it."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:  # not there (yet, or removed meanwhile)
        mtime = None
    changed, seen[path] = mtime is not None and seen.get(path) != mtime, mtime
    return changed


def _is_current(cfg: TwoStageConfig) -> bool:
    """:func:`has_current_stage1`, where a file that cannot be read (yet) is not current."""
    try:
        return has_current_stage1(cfg)
    except (OSError, ValueError):
        return False


def put_first(queue: deque, specs: list[JobSpec]) -> None:
    """Queue the jobs a job hands on (its retries once it ended, or the runs that waited for its stage 1)
    ahead of the jobs not started yet, in their order: a two-stage run's same-budget control runs
    next, so that finished pairs accumulate while a long grid runs, instead of every control
    waiting for the last stage-1 trainer."""
    queue.extendleft(reversed(specs))


def _launch_local(specs: list[JobSpec], lc: LaunchConfig, folder: Path, report: dict) -> None:
    """Run the jobs as local subprocesses, ``lc.jobs`` at a time; slot ``k`` is pinned to GPU
    ``lc.gpus[k % len(lc.gpus)]``, or to no GPU when there are none. Past ``lc.budget_min`` minutes
    no job starts and the live ones are interrupted (:func:`_stop_at_budget`)."""
    deadline = None if lc.budget_min is None else time.time() + 60 * lc.budget_min
    queue, live, stage1_seen = deque(specs), {}, {}  # live: slot -> (job, spec)
    mps = lc.jobs > len(lc.gpus) > 0 and start_mps(lc.quiet)  # several jobs per GPU: share it at once
    try:
        while queue or live:
            if deadline is not None and time.time() >= deadline:
                _stop_at_budget(queue, live, report, lc.budget_min)
                return
            while queue and len(live) < lc.jobs:
                slot = min(set(range(lc.jobs)) - set(live))
                spec = queue.popleft()
                live[slot] = (_start_local_job(spec, lc, slot, folder, report), spec)
            time.sleep(POLL_S)
            for slot, (job, spec) in list(live.items()):
                if job.done():
                    del live[slot]
                    put_first(queue, _finish(job, spec, lc.retries, report, lc.quiet))
            hand_on_written_stage1(live, queue, stage1_seen)
    except KeyboardInterrupt:  # stop the jobs too (their runs are marked interrupted and resume later)
        _interrupt(live)
        raise
    finally:
        if mps:
            stop_mps()


def _start_local_job(spec: JobSpec, lc: LaunchConfig, slot: int, folder: Path, report: dict):
    """Submit ``spec`` as a local job in ``slot``, pinned to that slot's GPU; record it."""
    import submitit

    gpu = lc.gpus[slot % len(lc.gpus)] if lc.gpus else None
    ex = submitit.LocalExecutor(folder, python=_job_python(gpu if gpu is not None else ""))
    ex.update_parameters(timeout_min=lc.timeout_min or LOCAL_TIMEOUT_MIN)
    job = ex.submit(_grid_job(spec.configs, spec.stage1_required))
    _write_record(folder, job.job_id, "local", spec)
    report["jobs"].append(job.job_id)
    if not lc.quiet:
        print(f"job {job.job_id} started" + (f" on GPU {gpu}" if gpu is not None else "")
              + ": " + ", ".join(describe(c) for c in spec.configs), flush=True)
    return job
def _interrupt(live: dict, wait_s: float = 60) -> None:
    """Interrupt the live local jobs and wait for them to end: each run marks itself interrupted,
    and its checkpoint of the last finished epoch stays for a rerun."""
    for job, _ in live.values():
        job.cancel(check=False)
    deadline = time.time() + wait_s
    while time.time() < deadline and not all(job.done() for job, _ in live.values()):
        time.sleep(POLL_S)


def _stop_at_budget(queue: deque, live: dict, report: dict, budget_min: float) -> None:
    """The time budget is spent: interrupt the live jobs, start no other, and say what is left."""
    _interrupt(live)
    report["stopped"] = {"budget_min": budget_min,
                         "interrupted": [describe(c) for _, spec in live.values() for c in spec.configs],
                         "not_started": [describe(c) for spec in queue for c in spec.configs + spec.then]
                                        + [describe(c) for _, spec in live.values() for c in spec.then]}


def start_mps(quiet: bool = False) -> bool:
    """Start NVIDIA's multi-process service where it is installed, so that several jobs' small
    kernels share one GPU's multiprocessors at once instead of taking turns. False if it is not
    there or did not start (the jobs then take turns on the GPU)."""
    if shutil.which("nvidia-cuda-mps-control") is None:
        return False
    try:
        r = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if not quiet:
        print("MPS started: the jobs share each GPU" if r.returncode == 0 else
              f"MPS did not start ({(r.stderr or r.stdout).strip()[-200:]}): jobs take turns on each GPU", flush=True)
    return r.returncode == 0


def stop_mps() -> None:
    try:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


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
        elif stage1_path(cfg) in busy and shares_stage1(cfg) and not has_current_stage1(cfg):
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
