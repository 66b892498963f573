"""One GPU lease's work in one command: the seed's grid and the literature-budget runs, many at once.

A GPU is lent for minutes, once, so this script does the work in order of value, inside a wall-clock
budget, and returns whatever finished even when the budget runs out:

1. the data: extracts the JPEG tarball (``--data-tar``) when ``data/cifar10`` is missing, then
   decodes and caches it once, before any run needs it;
2. ``bench.py`` (a short one: ``--max-steps``) while the GPU is idle;
3. the runs of ``--work``, in that order (``WORK``: the seed's baseline grid with 3 seeds; the
   literature-budget compare suite, every method and LDAM-DRW with its reference init; ``ce`` and
   ``ldam_drw`` of it in fp32, first seed; ``ce`` on images re-encoded at JPEG quality 50 and 25,
   first seed; the one-knob tuning with each seed's default run). Each run is its own process
   (``main.py`` with the run's settings, so each has a command that reproduces it), ``--jobs`` of
   them at once under MPS: one eager ResNet-32 at batch 128 keeps an H200 under 20 % busy. Within
   an item, runs start in order of value (``PRIORITY``); a run that reuses a stage 1 starts as soon
   as that stage 1 is on disk, before any run still waiting; runs that would miss the deadline are
   paused so that the others finish (:func:`rebalance`).

Every run's CSV and JSON, the logs and ``gpu_study.json`` (the events, each run's command, wall
time and return code, GPU load samples) are packed into ``OUT/results.tgz`` whenever a run ends and
every ``--pack-every`` seconds, so a call that times out still returns them. Runs checkpoint every
epoch: the same command again on the same machine resumes them and skips the finished ones.

GPU:  python gpu_study.py --data-tar .gpu_carry/cifar10-jpeg.tar.gz --budget 560
CPU dry run (smoke profile, the same plumbing):  python gpu_study.py --dry-run
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from cli import ArgumentParser, unique
from launch import plan_jobs
from main import config_argv
from run_all_models import BASELINE_MODELS, SCENARIOS, TUNING_MODELS, plan_baseline, plan_compare, plan_tuning
from runfiles import read_run_json
from two_stage_ictta import TwoStageConfig, is_finished, run_name, stage1_path

HERE = Path(__file__).resolve().parent
PY = sys.executable
# Runs that train from scratch start in this order (method, then seed); runs that reuse a stage 1
# go first once it exists. "ldam_drw_uniform_init" is LDAM-DRW with its reference code's classifier init.
PRIORITY = ("ce", "ldam_drw", "logit_adjust", "cb_focal", "balanced_softmax", "focal", "rw", "ldam_drw_uniform_init")


@dataclass
class Job:
    """One run as a process: its config, its command, and what it waits for."""
    label: str
    command: list[str]
    cfg: TwoStageConfig | None = None
    waits_for: Path | None = None  # a shared stage-1 checkpoint that must exist first
    proc: subprocess.Popen | None = None
    record: dict = field(default_factory=dict)
    log: Path | None = None
    paused: bool = False
    samples: deque = field(default_factory=lambda: deque(maxlen=600))  # (time, epochs done)
    done_total: tuple | None = None  # (epochs done, epochs in all), from the run's progress bar

    @classmethod
    def of(cls, cfg: TwoStageConfig, waits_for: Path | None = None) -> "Job":
        return cls(label(cfg), [PY, "main.py", *config_argv(cfg)], cfg, waits_for)

    def remaining(self) -> int:
        return self.done_total[1] - self.done_total[0] if self.done_total else 10**9

    def ready(self) -> bool:
        return self.waits_for is None or self.waits_for.exists()

    def observe(self, now: float) -> None:
        """Read the run's progress bar (epochs done / in all) from the end of its log."""
        seen = epochs_done(self.log)
        if seen is not None:
            self.done_total = seen
            self.samples.append((now, seen[0]))

    def rate(self, window: float) -> float | None:
        """Epochs per second over the last ``window`` seconds: None with less history than 80 % of
        that, or without an epoch ended in it (a first epoch, or an evaluation, may take that long)."""
        if not self.samples:
            return None
        t1, e1 = self.samples[-1]
        t0, e0 = next((t, e) for t, e in self.samples if t >= t1 - window)
        return None if t1 - t0 < 0.8 * window or e1 == e0 else (e1 - e0) / (t1 - t0)


def long_tail_compare(profile: str, seeds: tuple, imb: float, methods=None, **common) -> list[TwoStageConfig]:
    """The compare suite's runs of ``methods`` (default: all) on long_tail ``imb``."""
    return plan_compare(profile, None, ("long_tail",), seeds, methods, [imb], **common)


def literature_configs(profile: str, seeds: tuple, imb: float, **common) -> list[TwoStageConfig]:
    """Every method of the compare suite on long_tail ``imb``, plus LDAM-DRW with uniform init."""
    cfgs = long_tail_compare(profile, seeds, imb, **common)
    return cfgs + [replace(c, normed_init="uniform", exp_name="ldam_drw_uniform_init")
                   for c in cfgs if c.method == "ldam_drw"]


def fp32_configs(profile: str, seeds: tuple, imb: float, **common) -> list[TwoStageConfig]:
    """Cross-entropy and LDAM-DRW of the literature table in fp32, the first seed only: is bf16 the
    5-point gap? (One fp32 seed against the three bf16 seeds' interval answers that first.)"""
    return [replace(c, precision="fp32", exp_name=f"{c.method}_fp32")
            for c in long_tail_compare(profile, seeds[:1], imb, ("ce", "ldam_drw"), **common)]


def jpeg_configs(profile: str, seeds: tuple, imb: float, **common) -> list[TwoStageConfig]:
    """Cross-entropy of the literature table on images re-encoded at JPEG quality 50 and 25, the
    first seed only: how much does lossy storage cost, below the stored copy's quality 75?"""
    return [replace(c, jpeg_quality=q, exp_name=f"ce_jpeg{q}") for q in (50, 25)
            for c in long_tail_compare(profile, seeds[:1], imb, ("ce",), **common)]


def baseline_configs(profile: str, seeds: tuple, imb: float, **common) -> list[TwoStageConfig]:
    """The seed's own grid (issue 13): the two-stage method and its same-budget control, every
    model, both scenarios (``profile`` full: 20 + 20 epochs)."""
    return plan_baseline(profile, BASELINE_MODELS, SCENARIOS, seeds, **common)


def tuning_configs(profile: str, seeds: tuple, imb: float, **common) -> list[TwoStageConfig]:
    """The grid's one-knob-at-a-time tuning on every seed, each case's default run first: it trains
    the stage 1 that the case's points share, and each point is paired with it."""
    return plan_tuning(profile, TUNING_MODELS, SCENARIOS, seeds, with_default=True, **common)


# name: (configs, profile, results subfolder); --work runs them in the order given. The default
# puts the seed's own question first: the literature table's main methods are in (2026-11-27).
WORK = {"baseline": (baseline_configs, "full", "full"),
        "literature": (literature_configs, "literature", "literature"),
        "fp32": (fp32_configs, "literature", "fp32"),
        "jpeg": (jpeg_configs, "literature", "jpeg"),
        "tuning": (tuning_configs, "full", "tuning")}


def work_configs(names: list[str], seeds: tuple, results: Path, dry_run: bool, **common) -> list[list]:
    """Each work item's configs (a dry run: the smoke profile at imbalance 0.1), each run with its
    progress bar, which tells the scheduler how far it is."""
    out = []
    for name in names:
        make, profile, folder = WORK[name]
        profile, imb = ("smoke", 0.1) if dry_run else (profile, 0.01)
        cfgs = make(profile, seeds, imb, log_dir=str(results / folder), **common)
        out.append([replace(c, quiet=False) for c in cfgs])
    return out


def run_kind(cfg: TwoStageConfig) -> str:
    """What a run is called in PRIORITY and its label: its exp_name, else its method."""
    return cfg.exp_name or cfg.method


def label(cfg: TwoStageConfig) -> str:
    """A run's name in the events and its log's name: unique within a study."""
    case = "" if cfg.tag.startswith("compare") else f" {cfg.model_name}/{cfg.imbalance_type}"
    return f"{run_kind(cfg)}{case} seed{cfg.seed}"


def plan(items: list[list[TwoStageConfig]]) -> list[Job]:
    """The jobs in start order: work item by item; within one, each stage-1 group's first run from
    scratch in PRIORITY order, then by seed; the rest of a group wait for its stage-1 checkpoint.
    Finished runs are left out."""
    def rank(item: int, cfg):  # a run that reuses a stage 1 on disk ranks with the run that trained it
        name = run_kind(cfg)
        return item, PRIORITY.index(name) if name in PRIORITY else 0, cfg.seed

    specs = [(rank(i, s.configs[0]), s) for i, cfgs in enumerate(items) for s in plan_jobs(cfgs)]
    jobs = []
    for _, spec in sorted(specs, key=lambda rs: rs[0]):
        jobs += [Job.of(c) for c in spec.configs]
        jobs += [Job.of(c, waits_for=stage1_path(c)) for c in spec.then]
    return [j for j in jobs if not is_finished(j.cfg, read_run_json(j.cfg.log_dir, run_name(j.cfg)))]


def next_job(pending: list[Job]) -> Job | None:
    """The first waiting run whose stage 1 is ready, else the first run from scratch."""
    for j in pending:
        if j.waits_for is not None and j.ready():
            return j
    return next((j for j in pending if j.waits_for is None), None)


PROGRESS = re.compile(rb"(\d+)/(\d+) \[")


def epochs_done(log: Path | None) -> tuple[int, int] | None:
    """The last ``done/total`` that a run's tqdm bar wrote to its log, or None."""
    if log is None or not log.exists():
        return None
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        found = PROGRESS.findall(f.read())
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def rebalance(rates: list[float | None], remaining: list[int], time_left: float, slack: float = 0.75) -> int | None:
    """How many of the running runs (epoch ``rates``, ``remaining`` epochs) should run on, or None
    to leave them be. The runs share the GPU, so their summed rate R holds when fewer run; n runs
    with the fewest epochs left all finish in time when ``n * remaining_n <= R * time_left``
    (remaining sorted up). Fewer than now: the largest such n (finish-first: only finished runs
    count). One more than now: every run finishes within ``slack * time_left``. None while any
    rate is unknown (a new run, or a load that just changed)."""
    if not rates or any(r is None for r in rates):
        return None
    total, left = sum(rates), sorted(remaining)
    fits = [n for n in range(1, len(left) + 1) if n * left[n - 1] <= total * time_left]
    n = max(fits, default=1)
    if n < len(left):
        return n
    if all(r > 0 and e / r < slack * time_left for r, e in zip(rates, remaining)):
        return len(left) + 1
    return None


class Study:
    """The clock, the event log and the packing of results into ``out/results.tgz``."""

    def __init__(self, out: Path, results: Path, budget: float):
        self.t0, self.out, self.results, self.budget = time.time(), out, results, budget
        self.events, self.jobs, self.gpu_load, self.info = [], [], [], {}
        self.logs = results / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def note(self, msg: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.events.append(line)

    def pack(self) -> None:
        summary = {**self.info, "events": self.events, "runs": [j.record for j in self.jobs if j.record],
                   "gpu_load": self.gpu_load}
        (self.results / "gpu_study.json").write_text(json.dumps(summary, indent=1))
        tmp = self.out / "results.tgz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for f in sorted(self.results.rglob("*")):
                if f.is_file() and not f.name.endswith((".pt", ".lock", ".mutex")) and ".tmp" not in f.name:
                    try:  # a run may remove or replace a file meanwhile
                        tar.add(f, arcname=str(Path(self.results.name) / f.relative_to(self.results)))
                    except FileNotFoundError:
                        pass
        os.replace(tmp, self.out / "results.tgz")

    def run_alone(self, name: str, cmd: list[str], limit: float) -> int | str:
        """Run ``cmd`` to its end or for ``limit`` seconds; its output goes to logs/NAME.log."""
        self.note(f"start {name}: {' '.join(cmd)}")
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=HERE, env=child_env())
            try:
                rc = proc.wait(limit)
            except subprocess.TimeoutExpired:
                stop([proc])
                rc = "stopped at its limit"
        self.note(f"end {name}: rc={rc}")
        return rc


def child_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM, then SIGKILL after 10 s: a run killed mid-epoch resumes from its last epoch."""
    for p in procs:
        p.terminate()
    end = time.time() + 10
    for p in procs:
        try:
            p.wait(max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


def sample_gpu_load(study: Study, running: int) -> None:
    r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader"],
                       capture_output=True, text=True)
    if r.returncode == 0:
        study.gpu_load.append({"t_s": round(study.elapsed()), "runs": running, "util_mem": r.stdout.strip()})


def start(study: Study, job: Job) -> None:
    job.log = study.logs / f"{re.sub('[^A-Za-z0-9_.-]', '_', job.label)}.log"
    with open(job.log, "a") as log:
        job.proc = subprocess.Popen(job.command, stdout=log, stderr=subprocess.STDOUT, cwd=HERE, env=child_env())
    job.record = {"run": job.label, "name": run_name(job.cfg) if job.cfg else job.label,
                  "command": " ".join(job.command[1:]),
                  "started_s": round(study.elapsed(), 1), "paused_s": []}
    study.note(f"start {job.label}")


def finish(study: Study, job: Job, rc) -> None:
    job.record.update(rc=rc, ended_s=round(study.elapsed(), 1), epochs=job.done_total,
                      wall_s=round(study.elapsed() - job.record["started_s"], 1))
    study.note(f"end {job.label}: rc={rc}, {job.record['wall_s']} s, epochs {job.done_total}")


def pause(study: Study, job: Job, paused: bool) -> None:
    """SIGSTOP or SIGCONT a run: a stopped process keeps its GPU memory and loses nothing."""
    job.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
    job.paused = paused
    job.samples.clear()
    job.record["paused_s" if paused else "resumed_s"] = job.record.get("paused_s" if paused else "resumed_s", []) \
        + [round(study.elapsed(), 1)]
    study.note(f"{'pause' if paused else 'resume'} {job.label} at {job.done_total}")


def run_jobs(study: Study, jobs: list[Job], max_jobs: int, deadline: float, pack_every: float,
             poll_s: float = 1.0, window: float = 40.0, gpu: bool = True) -> None:
    """Run ``jobs`` as processes until all end or ``deadline`` (seconds since the start), at most
    ``cap`` at once: ``max_jobs`` at first, then as :func:`rebalance` says every ``window`` seconds
    (one fewer, pausing the run furthest from its end, while some run would miss the deadline; one
    more while all finish with room to spare). A free place goes to the paused run closest to its
    end, else to :func:`next_job`. Packs the results when a run ends and every ``pack_every`` s."""
    pending, live, cap = list(jobs), [], max_jobs
    last_pack = last_check = study.elapsed()
    while pending or live:
        fill(study, pending, live, cap)
        if not live:  # only runs waiting for a stage 1 that nothing is training any more
            study.note(f"nothing can start: {', '.join(j.label for j in pending)} wait for a missing stage 1")
            break
        time.sleep(poll_s)
        now = study.elapsed()
        for j in live:
            j.observe(now)
        ended = [j for j in live if j.proc.poll() is not None]
        for j in ended:
            live.remove(j)
            finish(study, j, j.proc.returncode)
        if now > deadline:
            stop_all(study, live)
            break
        if now - last_check > window:
            cap = adjust(study, live, cap, max_jobs, deadline - now, window)
            last_check = now
        if ended or now - last_pack > pack_every:
            if gpu:
                sample_gpu_load(study, sum(not j.paused for j in live))
            study.pack()
            last_pack = now


def fill(study: Study, pending: list[Job], live: list[Job], cap: int) -> None:
    """Resume paused runs (closest to their end first), then start new ones, up to ``cap`` running."""
    while sum(not j.paused for j in live) < cap:
        paused = [j for j in live if j.paused]
        if paused:
            pause(study, min(paused, key=Job.remaining), False)
        elif job := next_job(pending):
            pending.remove(job)
            start(study, job)
            live.append(job)
        else:
            return


def adjust(study: Study, live: list[Job], cap: int, max_jobs: int, time_left: float, window: float) -> int:
    """The new cap from :func:`rebalance`; pauses the runs furthest from their end above it."""
    running = [j for j in live if not j.paused]
    rates = [j.rate(window) for j in running]
    new = rebalance(rates, [j.remaining() for j in running], time_left)
    if new is None or new == cap:
        return cap
    study.note(f"epochs/s: {', '.join(f'{j.label} {r:.2f}' for j, r in zip(running, rates))}; "
               f"{time_left:.0f} s left: {len(running)} -> {new} running")
    for j in live:
        j.samples.clear()  # the rates change with the load: measure afresh
    for j in sorted(running, key=Job.remaining)[new:]:
        pause(study, j, True)
    return min(max_jobs, new)


def stop_all(study: Study, live: list[Job]) -> None:
    study.note(f"deadline: stopping {len(live)} runs (they resume from their last epoch)")
    for j in live:
        if j.paused:
            j.proc.send_signal(signal.SIGCONT)
    stop([j.proc for j in live])
    for j in live:
        finish(study, j, "stopped at the deadline")


def start_from(study: Study, folders: list[str]) -> None:
    """Copy committed runs' CSVs and JSONs (``results_*``) into ``results/<the folder's name>``, so
    that the finished ones are skipped. A file already there is kept: on a warm machine it is the
    run's own, maybe newer, copy. (Carrying the results folder instead replaces it, and with it the
    machine's checkpoints.)"""
    for folder in map(Path, folders):
        if not any(folder.glob("results_*")):
            raise SystemExit(f"gpu_study.py: error: --start-from {folder}: no results_* files there; "
                             "see gpu_study.py --help")
        dest = study.results / folder.name
        dest.mkdir(parents=True, exist_ok=True)
        new = [f for f in sorted(folder.glob("results_*")) if f.suffix in (".csv", ".json")
               and not (dest / f.name).exists()]
        for f in new:
            shutil.copy2(f, dest)
        study.note(f"start from {folder}: {len(new)} files copied into {dest}")


def prepare_data(study: Study, data_tar: str | None, data_root: str | None) -> None:
    """Extract the tarball if the default data folder is missing; decode and cache once."""
    import data_loader

    root = Path(data_root) if data_root else HERE / "data" / "cifar10"
    if data_tar and not (root / "train").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", data_tar, "-C", str(root)], check=True)
        study.note(f"extracted {data_tar} into {root}")
    data = data_loader.load_dataset(data_root)
    study.note(f"data: train {tuple(data.train_x.shape)}, test {tuple(data.test_x.shape)}")


def start_mps(study: Study) -> bool:
    """Start NVIDIA's multi-process service, so that the runs' small kernels share the GPU's
    multiprocessors at once instead of taking turns; keep it only if a CUDA client works under it."""
    try:
        r = subprocess.run(["nvidia-cuda-mps-control", "-d"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        study.note(f"MPS did not start ({e}): runs take turns")
        return False
    if r.returncode != 0:
        study.note(f"MPS did not start (rc {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}): runs take turns")
        return False
    probe = [PY, "-c", "import torch; print(torch.ones(1, device='cuda').add(1).item())"]
    try:
        ok = subprocess.run(probe, capture_output=True, text=True, timeout=45).stdout.strip() == "2.0"
    except subprocess.TimeoutExpired:
        ok = False
    study.note("MPS on: a CUDA client works under it" if ok else "MPS client failed: MPS stopped, runs take turns")
    if not ok:
        stop_mps()
    return ok


def stop_mps() -> None:
    try:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pass


def environment(device: str) -> dict:
    """bench.py's machine record (read without opening a CUDA context here: MPS starts later), the
    GPU as nvidia-smi names it, the start time and the command."""
    import torch

    from bench import machine_info

    info = {**machine_info(torch.device("cpu")), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv}
    if device == "cuda":
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        info["gpu"] = r.stdout.strip()
    return info


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"), help="where results.tgz goes (default: $OUT)")
    p.add_argument("--results", default="results_gpu", help="the runs' folder (default: %(default)s)")
    p.add_argument("--budget", type=float, default=560.0, help="seconds for everything (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=12, help="runs at once (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", nargs="+", choices=tuple(WORK), default=list(WORK),
                   help="what to run, in this order of value (default: %(default)s)")
    p.add_argument("--start-from", nargs="+", default=[], metavar="FOLDER",
                   help="committed run folders (e.g. benchmarks/.../literature) to copy into RESULTS/<name> first")
    p.add_argument("--data-tar", help="the CIFAR-10 JPEG tarball, extracted when data/cifar10 is missing")
    p.add_argument("--data-root", help="dataset folder (default: data/cifar10)")
    p.add_argument("--bench-steps", type=int, default=20, help="bench.py --max-steps; 0 skips the bench")
    p.add_argument("--pack-every", type=float, default=30.0, help="seconds between packs (default: %(default)s)")
    p.add_argument("--mps", action=argparse.BooleanOptionalAction, default=True,
                   help="run the runs under NVIDIA's multi-process service (default: on, if it works)")
    p.add_argument("--accept-code-change", action="store_true", help="the runs' --accept-code-change (README)")
    p.add_argument("--dry-run", action="store_true", help="CPU, smoke profile, 2 jobs: checks the plumbing")
    return p


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, found before the lease's seconds go into it; or None."""
    if not (args.jobs >= 1 and args.budget > 0 and args.pack_every > 0 and min(args.seeds) >= 0
            and args.bench_steps >= 0):  # "not >": NaN fails too
        return "--jobs must be >= 1, --budget and --pack-every > 0, --seeds and --bench-steps >= 0"
    if args.data_tar and not Path(args.data_tar).is_file():
        return f"--data-tar {args.data_tar}: no such file"
    if not args.dry_run and not gpu_visible():
        return "no NVIDIA GPU here (nvidia-smi -L lists none): run it on the GPU machine, or add --dry-run on a CPU"
    return None


def gpu_visible() -> bool:
    """Whether ``nvidia-smi -L`` runs and lists a GPU."""
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def failed_runs(jobs: list[Job]) -> list[str]:
    """The runs that ended with an error (not those stopped at the deadline: they resume)."""
    return [j.label for j in jobs if isinstance(j.record.get("rc"), int) and j.record["rc"] != 0]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.seeds = unique(args.seeds)
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    device = "cpu" if args.dry_run else "cuda"
    jobs = min(args.jobs, 2) if args.dry_run else args.jobs
    results = (HERE / args.results).resolve()
    study = Study(Path(args.out).resolve(), results, args.budget)
    study.info = environment(device)
    study.note(f"environment: {study.info}")
    start_from(study, args.start_from)
    try:
        prepare_data(study, args.data_tar, args.data_root)
    except (ValueError, subprocess.CalledProcessError) as e:  # no dataset there, a tarball tar cannot read
        study.pack()
        parser.error(f"data: {e}")

    bench_json = results / f"bench_{device}.json"
    if args.bench_steps and not bench_json.exists():
        bench = [PY, "bench.py", "--device", device, "--max-steps", str(args.bench_steps), "--workers", "4",
                 "--model", "simplecnn" if args.dry_run else "resnet32", "--out", str(bench_json)]
        study.run_alone("bench", bench + (["--data-root", args.data_root] if args.data_root else []), limit=60)
    study.pack()

    common = dict(device=device, threads=1, accept_code_change=args.accept_code_change,
                  data_root=args.data_root and str(Path(args.data_root).resolve()))
    todo = plan(work_configs(args.work, tuple(args.seeds), results, args.dry_run, **common))
    study.jobs = todo
    study.note(f"{len(todo)} runs to do, {jobs} at once: {', '.join(j.label for j in todo)}")
    mps = device == "cuda" and args.mps and start_mps(study)
    study.info["mps"] = mps
    try:
        run_jobs(study, todo, jobs, deadline=args.budget - 20, pack_every=args.pack_every, gpu=device == "cuda")
    finally:
        if mps:
            stop_mps()
    failed = failed_runs(todo)
    study.note("done" + (f"; {len(failed)} run(s) failed: {', '.join(failed)} (their logs in {study.logs})" if failed else ""))
    study.pack()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
