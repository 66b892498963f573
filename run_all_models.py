"""The experiment grid: every model x scenario x configuration x seed, resumable.

Suites (``--suite``):

* ``grid`` (the default): :func:`run_baseline_all_models` (the two-stage method with its default
  settings, plus a same-budget control for each: the same stage 1, then stage 2 with
  ``dynamic_mode="none"`` and cross-entropy) followed by :func:`run_tuning_resnets` (the stage-2
  knobs of :data:`TUNING_GRID` on the ResNets, one knob at a time; ``--tuning product`` runs every
  combination, 10 times the runs).
* ``compare``: every method of :data:`two_stage_ictta.METHODS`, the field's methods beside ours on
  the same data, model, schedule and seeds.

Every run is :func:`two_stage_ictta.run_two_stage` with a config built here: a finished run is
skipped, a killed one resumes from its last epoch, and runs that share a stage 1 train it once
(they are ordered so that the first of them does). Results go to ``<out>/<profile>/``.

Before the first run the command prints the plan (:func:`format_plan`): the runs, how many finished
before and will be skipped, the epochs, and the time the rest will take here, estimated from a few
timed training steps per model (``--no-estimate`` skips them). ``--dry-run`` prints it and exits.

Launchers (``--launcher``; :func:`launch.launch`, through submitit):

* ``inline`` (the default): the runs one after another in this process.
* ``local``: ``--jobs N`` jobs at once, each a subprocess pinned to one GPU (round-robin over
  ``$CUDA_VISIBLE_DEVICES``), or, without GPUs, running on ``cores // N`` CPU threads.
* ``slurm``: one SLURM job per run, submitted as job arrays (``--partition``, ``--gpus-per-job``,
  ``--timeout-min``, ``--mem-gb``, ``--slurm-extra``); ``--wait`` to wait for them.

Whatever the launcher, a finished run is never redone nor submitted again, the run that trains a
shared stage 1 goes first and the runs sharing it wait for its job, and ``--status`` counts the
plan's runs done, running, failed and missing (:func:`launch.grid_status` states the rule).
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import shlex
import sys
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from cli import ArgumentParser, nearest_existing, unique, unwritable_folder
from data_loader import DATASETS, DEFAULT_DATASET, find_dataset, load_dataset, make_split
from estimate import format_duration, run_seconds, time_model
from model import MODELS
from results_logger import now, write_json
from runfiles import RunLockedError, read_run_json
from two_stage_ictta import (METHODS, TwoStageConfig, data_read_elsewhere, is_finished, run_name, run_two_stage,
                             stage1_hash, stage1_path, validate_config)

BASELINE_MODELS = tuple(MODELS)  # every model: the seed's four and ResNet-32, which the literature uses
TUNING_MODELS = ("resnet10", "resnet15", "resnet20")
SCENARIOS = ("long_tail", "head_tail")

# Stage-2 knobs of the tuning grid. By default they vary one knob at a time around the profile's
# settings (TUNING_MODES[0]: 8 points); "product" runs every combination (80 points, 10x the runs).
TUNING_GRID = {
    "stage2_lr": (0.003, 0.01, 0.03),
    "weight_range": ((1.0, 4.0), (1.0, 8.0), (1.0, 16.0)),  # (min_weight, max_weight)
    "stage2_focal_gamma": (0.0, 1.5, 3.0),
    "dynamic_mode": ("loss", "val_loss", "val_error"),
}
TUNING_MODES = ("one_at_a_time", "product")

# Variants of the two-stage method that test why it trails DRW and logit adjustment: each is the
# profile's default two-stage run with these settings; exp_name "abl-<name>". They share stage 1
# with the compare suite's cross-entropy runs in the same folder.
ABLATIONS = {
    "stage2-cosine-lr0.01": dict(stage2_schedule="cosine", stage2_lr=0.01),  # stage 2's learning rate
    "maxw32": dict(max_weight=32.0),  # the weight cap (DRW's rarest class gets ~80x)
    "maxw100": dict(max_weight=100.0),
    "stat-held-out": dict(dynamic_mode="val_loss"),  # the statistic: held-out loss, not training loss
    "prior0.5": dict(prior_blend=0.5),  # half statistic, half inverse frequency
    "prior1-maxw100": dict(prior_blend=1.0, max_weight=100.0),  # counts only: DRW-like weights, focal
    "prior1-maxw100-ce": dict(prior_blend=1.0, max_weight=100.0, stage2_loss_type="ce"),  # ... and CE
    "ce": dict(stage2_loss_type="ce"),  # the loss: CE instead of focal
}

# A profile: overrides of TwoStageConfig, what the suites run, and (``about``) what --help says of
# it beside its epochs, which --help reads from ``config``.
PROFILES = {
    "smoke": {
        "about": "on 40 images per class, for tests (seconds)",
        "config": dict(stage1_epochs=1, stage2_epochs=1, imb_factor=0.1, n_max=40, val_per_class=5, stat_per_class=5,
                       batch_size=32, eval_batch_size=256),
        "tuning_limit": 1,
        "compare_models": ("resnet10",), "compare_scenarios": (("long_tail", 0.1),),
    },
    "quick": {
        "about": "n_max 1500 (its grid took 2 h 13 min on a 2-core CPU)",
        "config": dict(stage1_epochs=12, stage2_epochs=8, n_max=1500, eval_every=2),
        "compare_models": ("resnet20",), "compare_scenarios": (("long_tail", 0.01),),
    },
    "full": {
        "about": "on all the data: the seed project's budget (the default)",
        "config": dict(),
        "compare_models": ("resnet32",), "compare_scenarios": (("long_tail", 0.01), ("head_tail", 0.01)),
    },
    "reduced": {  # the literature recipe scaled to 20 epochs: 3 seeds of the comparison fit a 2-core CPU
        "about": "ResNet-10 for the compare suite, step decay at 16 and 18",
        "config": dict(stage1_epochs=16, stage2_epochs=4, stage1_lr=0.1, stage2_lr=0.1, schedule="step",
                       lr_milestones=(16, 18), warmup_epochs=1.0, eval_every=4),
        "compare_models": ("resnet10",), "compare_scenarios": (("long_tail", 0.01),),
    },
    "literature": {  # Cao et al. 2019's recipe: DRW / stage 2 from epoch 160
        "about": "Cao et al.'s recipe (200 epochs), ResNet-32 for the compare suite",
        "config": dict(stage1_epochs=160, stage2_epochs=40, stage1_lr=0.1, stage2_lr=0.1, schedule="step",
                       lr_milestones=(160, 180), warmup_epochs=5.0, weight_decay=2e-4, batch_size=128,
                       eval_every=10),
        "compare_models": ("resnet32",),
        "compare_scenarios": (("long_tail", 0.01), ("head_tail", 0.01), ("long_tail", 0.02), ("long_tail", 0.1)),
    },
}


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def profile_settings(profile: str) -> dict:
    """Every TwoStageConfig default, overridden by the profile's config."""
    return {**{f.name: f.default for f in dataclasses.fields(TwoStageConfig)}, **PROFILES[profile]["config"]}


def profile_help(profile: str) -> str:
    """``<name>: <stage 1> + <stage 2> epochs, <about>``, the epochs read from the profile's config."""
    s = profile_settings(profile)
    return f"{profile}: {s['stage1_epochs']} + {s['stage2_epochs']} epochs, {PROFILES[profile]['about']}"


def profile_label(profile: str, dataset: str = DEFAULT_DATASET) -> str:
    """The name of a profile's runs on a dataset: the profile, plus ``-<dataset>`` for another dataset
    than CIFAR-10. Runs go to ``OUT/<label>/`` and are tagged ``<suite>-<label>``, so that tables and
    figures never mix two datasets."""
    return profile if dataset == DEFAULT_DATASET else f"{profile}-{dataset}"


def tuning_points(profile: str, tuning: str = TUNING_MODES[0]) -> list[dict]:
    """Stage-2 settings of the tuning grid for a profile, the baseline point excluded (the
    baseline run is that point): one knob at a time around the profile's settings (the default),
    or the product of every knob's values (``tuning="product"``). The baseline is the profile's own
    config over the dataclass defaults, so a one-at-a-time point differs from it in one knob only."""
    if tuning not in TUNING_MODES:
        raise ValueError(f"tuning={tuning!r}; valid: {', '.join(TUNING_MODES)}")
    s = profile_settings(profile)
    base = {"stage2_lr": s["stage2_lr"], "weight_range": (s["min_weight"], s["max_weight"]),
            "stage2_focal_gamma": s["stage2_focal_gamma"], "dynamic_mode": s["dynamic_mode"]}
    if tuning == "product":
        points = [dict(zip(TUNING_GRID, values)) for values in itertools.product(*TUNING_GRID.values())]
    else:
        points = [{**base, knob: v} for knob, values in TUNING_GRID.items() for v in values]
    unique = []
    for p in points:
        if p != base and p not in unique:
            unique.append(p)
    return unique[:PROFILES[profile].get("tuning_limit")]


def _tuning_settings(point: dict) -> dict:
    lo, hi = point["weight_range"]
    name = (f"tune-lr{_fmt(point['stage2_lr'])}-w{_fmt(lo)}-{_fmt(hi)}"
            f"-g{_fmt(point['stage2_focal_gamma'])}-{point['dynamic_mode']}")
    return dict(exp_name=name, stage2_lr=point["stage2_lr"], min_weight=lo, max_weight=hi,
                stage2_focal_gamma=point["stage2_focal_gamma"], dynamic_mode=point["dynamic_mode"])


def _config(profile: str, suite: str, model: str, scenario: str, seed: int, common: dict, **settings):
    overrides = {**PROFILES[profile]["config"], **common, **settings}
    overrides.setdefault("quiet", True)
    label = profile_label(profile, overrides.get("dataset", DEFAULT_DATASET))
    return TwoStageConfig(model, scenario, seed=seed, tag=f"{suite}-{label}", **overrides)


def plan_baseline(profile="full", models=BASELINE_MODELS, scenarios=SCENARIOS, seeds=(0,), **common):
    """Two-stage runs with default settings, each followed by its same-budget control."""
    return [cfg for seed in seeds for model in models for scenario in scenarios for cfg in (
        _config(profile, "baseline", model, scenario, seed, common, exp_name="baseline"),
        _config(profile, "baseline", model, scenario, seed, common, exp_name="control",
                dynamic_mode="none", stage2_loss_type="ce"))]


def plan_tuning(profile="full", models=TUNING_MODELS, scenarios=SCENARIOS, seeds=(0,), tuning=TUNING_MODES[0],
                with_default=False, **common):
    """The tuning points (:func:`tuning_points`) on every model, scenario and seed. ``with_default``:
    each case's points follow a run at the profile's own settings (exp_name ``default``), which
    trains the stage 1 they share and is their pair, for a folder without the baseline suite's runs."""
    settings = ([dict(exp_name="default")] if with_default else []) + \
        [_tuning_settings(point) for point in tuning_points(profile, tuning)]
    return [_config(profile, "tuning", model, scenario, seed, common, **s)
            for seed in seeds for model in models for scenario in scenarios for s in settings]


def plan_compare(profile="reduced", models=None, scenarios=None, seeds=(0, 1, 2), methods=None,
                 imb_factors=None, **common):
    """Every method (default: every registered one) on every (scenario, imb_factor) case of the
    profile; ``scenarios`` and ``imb_factors`` keep only the matching cases."""
    spec = PROFILES[profile]
    cases = [c for c in spec["compare_scenarios"] if (scenarios is None or c[0] in scenarios)
             and (imb_factors is None or any(abs(c[1] - f) < 1e-12 for f in imb_factors))]
    if not cases:
        raise ValueError(f"no compare case of profile {profile!r} matches scenarios={scenarios} "
                         f"imb_factors={imb_factors}; its cases: {spec['compare_scenarios']}")
    return [_config(profile, "compare", model, scenario, seed, common, method=method, imb_factor=imb)
            for seed in seeds for model in (models or spec["compare_models"]) for scenario, imb in cases
            for method in (methods or tuple(METHODS))]


def plan_ablation(profile="reduced", models=None, scenarios=None, seeds=(0, 1, 2), variants=tuple(ABLATIONS),
                  **common):
    """The two-stage variants of :data:`ABLATIONS` on the profile's compare cases."""
    spec = PROFILES[profile]
    cases = [c for c in spec["compare_scenarios"] if scenarios is None or c[0] in scenarios]
    return [_config(profile, "ablation", model, scenario, seed, common, method="two_stage_ictta",
                    imb_factor=imb, exp_name=f"abl-{name}", **ABLATIONS[name])
            for seed in seeds for model in (models or spec["compare_models"]) for scenario, imb in cases
            for name in variants]


def shares_stage1(cfg: TwoStageConfig) -> bool:
    """Whether ``cfg`` reads or writes the shared stage-1 checkpoint of its log_dir."""
    return cfg.reuse_stage1 and cfg.stage1_epochs > 0


def order_for_sharing(configs: list[TwoStageConfig]) -> list[TwoStageConfig]:
    """Stable order in which runs sharing a stage 1 are adjacent: the first trains it, the rest reuse it."""
    first_seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        first_seen.setdefault(stage1_hash(cfg), i)
    return sorted(configs, key=lambda c: first_seen[stage1_hash(c)])


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


# ----------------------------------------------------------------------------------------------
# The plan: how many runs, how many finished, how long the rest will take here

ESTIMATE_STEPS = 3  # timed training steps per model setting: seconds of the user's time
STEP_UNITS = {"step_s": 1.0, "eval_image_s": 0.0}  # without timings, a run's work counts in steps


def plan_work(configs: list[TwoStageConfig], datasets: dict) -> list[dict]:
    """Each run of ``configs``, in the order given (the order they run in): ``finished`` (a rerun
    skips it); ``trains_stage1`` (no earlier unfinished run of the plan and no checkpoint on disk
    provides its stage 1); ``sizes`` (its train, val, test, stat image counts, None without data);
    and ``steps``, its training steps."""
    provided, work = set(), []
    for cfg in configs:
        meta = read_run_json(cfg.log_dir, run_name(cfg))
        finished = is_finished(cfg, meta)
        shared = shares_stage1(cfg) and (stage1_path(cfg) in provided or stage1_path(cfg).exists())
        if not finished and shares_stage1(cfg):
            provided.add(stage1_path(cfg))
        data = datasets.get((cfg.data_root, cfg.dataset))
        sizes = _split_sizes(cfg, data) if data is not None else None
        trains_stage1 = not finished and cfg.stage1_epochs > 0 and not shared
        work.append({"cfg": cfg, "finished": finished, "read_elsewhere": finished and data_read_elsewhere(cfg, meta),
                     "trains_stage1": trains_stage1, "sizes": sizes,
                     "steps": sizes and run_seconds(cfg, sizes, STEP_UNITS, trains_stage1)})
    return work


def _split_sizes(cfg: TwoStageConfig, data) -> dict:
    """Image counts of ``cfg``'s splits; they do not depend on the seed."""
    split = make_split(data.train_y, cfg.imbalance_type, cfg.imb_factor, n_max=cfg.n_max,
                       val_per_class=cfg.val_per_class, stat_per_class=cfg.stat_per_class)
    return {"train": len(split.train_idx), "val": len(split.val_idx), "stat": len(split.stat_idx),
            "test": len(data.test_y)}


def estimate_work(work: list[dict], datasets: dict, steps: int = ESTIMATE_STEPS) -> dict:
    """Time ``steps`` training steps of each model setting of the unfinished runs (:func:`estimate.time_model`)
    and set each one's ``seconds``; return the timings by model setting."""
    timings = {}
    for w in work:
        cfg, data = w["cfg"], datasets.get((w["cfg"].data_root, w["cfg"].dataset))
        if w["finished"] or data is None:
            continue
        key = (cfg.model_name, cfg.batch_size, cfg.eval_batch_size, cfg.device, cfg.precision, cfg.channels_last,
               cfg.threads, data.num_classes)
        if key not in timings:
            timings[key] = time_model(cfg, data.num_classes, data.train_x.shape[1:3], steps)
        w["seconds"] = run_seconds(cfg, w["sizes"], timings[key], w["trains_stage1"])
    return timings


def stage1_count(n: int) -> str:
    return f"{n} stage 1" + ("" if n == 1 else "s")


def format_plan(work: list[dict], parts: list[tuple[str, list]], timings: dict | None = None) -> str:
    """The plan in a few lines: runs per part, epochs, finished and to run, stage-1 trainings, and
    the estimated time of what is left when it was timed."""
    todo = [w for w in work if not w["finished"]]
    epochs = sorted({f"{w['cfg'].stage1_epochs} + {w['cfg'].stage2_epochs}" for w in work})
    lines = [f"plan: {len(work)} runs ({', '.join(f'{name} {len(cfgs)}' for name, cfgs in parts)}), "
             f"{' or '.join(epochs)} epochs each",
             f"  {len(work) - len(todo)} finished before (skipped), {len(todo)} to run, training "
             f"{stage1_count(sum(w['trains_stage1'] for w in todo))} (the others share one)"]
    elsewhere = sorted({w["read_elsewhere"] for w in work if w["read_elsewhere"]})
    if elsewhere:
        lines.append(f"  {sum(bool(w['read_elsewhere']) for w in work)} of the finished runs read their data from "
                     f"{', '.join(elsewhere)}, not this data root: reused all the same (data_root is not part of a "
                     f"run's identity); another --out trains them on this data")
    missing = sorted({str(w["cfg"].data_root or "the default data folder") for w in todo if w["sizes"] is None})
    if missing:
        lines.append(f"  no data yet in {', '.join(missing)}: no time estimate")
    elif todo and timings:
        seconds = sum(w["seconds"] for w in todo)
        per_model = ", ".join(f"{k[0]} {t['step_s']:.2f} s" for k, t in timings.items())
        lines.append(f"  estimated time here, one run after another: {format_duration(seconds)} "
                     f"(from {ESTIMATE_STEPS} timed steps per model: {per_model} per step of "
                     f"{'/'.join(sorted({str(k[1]) for k in timings}))} images)")
    return "\n".join(lines)


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
                          ("deferred", "deferred: their stage 1 is being trained by a live job; rerun when it ends"),
                          ("retried", "resubmitted after their job died")):
            if report[key]:
                lines.append(f"  {len(report[key])} {what}")
                lines += [f"    {r}" for r in report[key][:20]] + (["    ..."] if len(report[key]) > 20 else [])
    lines += [f"  resumed: {r}" for r in report["resumed"]]
    lines += [f"  left to the process that holds its lock: {r}" for r in report.get("locked", [])]
    lines += [f"  FAILED {f['run']}: {f['error']}" for f in report["failed"]]
    return "\n".join(lines)


def _out_dir(out, profile, dataset: str = DEFAULT_DATASET) -> str:
    return str(Path(out) / profile_label(profile, dataset))


def run_baseline_all_models(profile="full", models=BASELINE_MODELS, scenarios=SCENARIOS, seeds=(0,),
                            out="results", quiet=False, **common) -> dict:
    """Every baseline model on every scenario: two-stage method + same-budget control."""
    out_dir = Path(_out_dir(out, profile, common.get("dataset", DEFAULT_DATASET)))
    configs = plan_baseline(profile, models, scenarios, seeds, log_dir=str(out_dir), **common)
    return run_grid(configs, quiet, out_dir / "report_baseline.json")


def run_tuning_resnets(profile="full", models=TUNING_MODELS, scenarios=SCENARIOS, seeds=(0,),
                       tuning=TUNING_MODES[0], out="results", quiet=False, **common) -> dict:
    """The stage-2 tuning grid on the ResNets (stage 1 shared with the baseline runs)."""
    out_dir = Path(_out_dir(out, profile, common.get("dataset", DEFAULT_DATASET)))
    configs = plan_tuning(profile, models, scenarios, seeds, tuning, log_dir=str(out_dir), **common)
    return run_grid(configs, quiet, out_dir / "report_tuning.json")


def run_compare(profile="reduced", models=None, scenarios=None, seeds=(0, 1, 2), methods=None,
                imb_factors=None, out="results", quiet=False, **common) -> dict:
    """The field's methods and ours, same data, model, schedule and seeds."""
    out_dir = Path(_out_dir(out, profile, common.get("dataset", DEFAULT_DATASET)))
    configs = plan_compare(profile, models, scenarios, seeds, methods, imb_factors, log_dir=str(out_dir), **common)
    return run_grid(configs, quiet, out_dir / "report_compare.json")


# ----------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)
    p.add_argument("--suite", choices=("grid", "baseline", "compare", "ablation"), default="grid",
                   help="grid: baseline + control + tuning (default); baseline: the grid without its tuning "
                        "(the two-stage method and its same-budget control); compare: the methods side by side; "
                        "ablation: the two-stage variants of ABLATIONS (why it trails DRW)")
    p.add_argument("--profile", choices=tuple(PROFILES), default="full",
                   help="; ".join(profile_help(name) for name in PROFILES))
    p.add_argument("--tuning", choices=TUNING_MODES, default=TUNING_MODES[0],
                   help=f"grid suite's stage-2 tuning: one knob at a time ({len(tuning_points('full'))} points per "
                        f"model and scenario, the default) or the product of the knobs' values "
                        f"({len(tuning_points('full', 'product'))} points)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and exit 0, writing nothing and downloading nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help=f"skip the time estimate ({ESTIMATE_STEPS} timed training steps per model before the first run)")
    p.add_argument("--models", nargs="+", choices=tuple(MODELS), metavar="MODEL",
                   help=f"models, of {', '.join(MODELS)} (default: the suite's)")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, help="scenarios (default: both)")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), help="compare suite: methods (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 for grid, 0 1 2 for compare)")
    p.add_argument("--dataset", choices=tuple(DATASETS), default=DEFAULT_DATASET,
                   help="dataset; runs of another than cifar10 go to OUT/PROFILE-DATASET/ (default: %(default)s)")
    p.add_argument("--data-root", help="dataset folder (default: $CIFAR10_ROOT, else data/cifar10; for cifar100 "
                                       "$CIFAR100_ROOT, else data/cifar100)")
    p.add_argument("--download", action="store_true", default=None,  # unset: data/<dataset> downloads, nothing else
                   help="download the dataset into --data-root if it is not there (data/cifar10 needs no flag)")
    p.add_argument("--out", default="results", help="results folder; runs go to OUT/PROFILE/")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="override the precision (default: bf16)")
    p.add_argument("--threads", type=int, help="CPU threads per run (local launcher default: cores / --jobs)")
    p.add_argument("--imb-factors", nargs="+", type=float,
                   help="imbalance factors (grid: run at each; compare: keep only these cases)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the training forward (MODE: default, reduce-overhead, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--accept-code-change", action="store_true",
                   help="keep (skip, resume, share) results made by other code: only after showing the "
                        "change numerically neutral (README, 'Code changes and old results')")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write each run's curves for TensorBoard to OUT/PROFILE/tensorboard/ (optional package)")
    _add_launcher_options(p.add_argument_group("launchers (submitit; jobs' files go to OUT/PROFILE/jobs/)"))
    return p


def _add_launcher_options(g) -> None:
    import launch  # imports this module: not at the top

    g.add_argument("--launcher", choices=("inline", "local", "slurm"), default="inline",
                   help="inline: one run after another in this process (default); local: --jobs subprocesses "
                        "at once, one GPU each; slurm: one SLURM job per run (job arrays)")
    g.add_argument("--status", action="store_true",
                   help="print how many runs of the plan are done, running, failed and missing, and exit")
    g.add_argument("--jobs", type=int, help="local: jobs at once (default: one per visible GPU, else 1); "
                                            "slurm: tasks of each job array running at once")
    g.add_argument("--retries", type=int, help="local, slurm --wait: resubmissions of a job that ended without "
                                               "reporting its runs: killed, out of memory, node failure (default 1)")
    g.add_argument("--timeout-min", type=int, help=f"local, slurm: minutes per job (slurm default "
                                                   f"{launch.SLURM_TIMEOUT_MIN}; a timed-out job is requeued and resumes)")
    g.add_argument("--partition", help="slurm: partition")
    g.add_argument("--gpus-per-job", type=int, help="slurm: GPUs per job (default 1; 0 for a CPU partition)")
    g.add_argument("--mem-gb", type=float, help="slurm: memory per job, GB")
    g.add_argument("--slurm-extra", nargs="+", metavar="KEY=VALUE",
                   help="slurm: more sbatch options, e.g. account=proj qos=high cpus-per-task=8 (a bare KEY "
                        "is a flag, e.g. exclusive)")
    g.add_argument("--wait", action="store_true", help="slurm: wait for the jobs, retry, and print the end report")


def _check_launcher_flags(parser: argparse.ArgumentParser, args) -> None:
    """Bad combinations of launcher flags are usage errors (exit 2)."""
    if args.launcher != "slurm":
        for flag, value in (("--partition", args.partition), ("--gpus-per-job", args.gpus_per_job),
                            ("--mem-gb", args.mem_gb), ("--slurm-extra", args.slurm_extra), ("--wait", args.wait or None)):
            if value is not None:
                parser.error(f"{flag} needs --launcher slurm")
    if args.launcher == "inline":
        for flag, value in (("--jobs", args.jobs), ("--retries", args.retries), ("--timeout-min", args.timeout_min)):
            if value is not None:
                parser.error(f"{flag} needs --launcher local or slurm")
    for flag, value, least in (("--jobs", args.jobs, 1), ("--retries", args.retries, 0),
                               ("--timeout-min", args.timeout_min, 1), ("--gpus-per-job", args.gpus_per_job, 0)):
        if value is not None and value < least:
            parser.error(f"{flag} {value}: must be >= {least}")
    if args.mem_gb is not None and not args.mem_gb > 0:
        parser.error(f"--mem-gb {args.mem_gb}: must be > 0")
    if args.launcher == "slurm" and args.retries is not None and not args.wait:
        parser.error("--retries with slurm needs --wait (without it, rerun the command: it resubmits what is missing)")
    if args.launcher != "inline" and args.device.startswith("cuda:"):
        parser.error(f"--device {args.device}: each job sees only its own GPU, as cuda:0; use --device auto or cuda")
    for item in args.slurm_extra or ():
        if not item.split("=", 1)[0]:
            parser.error(f"--slurm-extra {item!r}: expected KEY=VALUE or KEY")


def plan_parts(args, common: dict) -> list[tuple[str, list[TwoStageConfig]]]:
    """The CLI's plan, as (report name, configs) parts in the order the inline launcher runs them."""
    out = _out_dir(args.out, args.profile, args.dataset)
    scenarios = tuple(args.scenarios) if args.scenarios else None
    if args.suite == "ablation":
        return [("ablation", plan_ablation(args.profile, args.models, scenarios, tuple(args.seeds or (0, 1, 2)),
                                           log_dir=out, **common))]
    if args.suite == "compare":
        return [("compare", plan_compare(args.profile, args.models, scenarios, tuple(args.seeds or (0, 1, 2)),
                                         tuple(args.methods or METHODS), args.imb_factors,
                                         log_dir=out, **common))]
    seeds, scenarios = tuple(args.seeds or (0,)), scenarios or SCENARIOS
    parts = []
    for imb in args.imb_factors or [None]:
        extra = {} if imb is None else {"imb_factor": imb}
        parts += [("baseline", plan_baseline(args.profile, tuple(args.models or BASELINE_MODELS), scenarios, seeds,
                                             log_dir=out, **common, **extra)),
                  (f"tuning ({args.tuning})", [] if args.suite == "baseline" else
                   plan_tuning(args.profile, tuple(m for m in (args.models or TUNING_MODELS) if m.startswith("resnet")),
                               scenarios, seeds, args.tuning, log_dir=out, **common, **extra))]
    return parts


def show_plan(parts: list[tuple[str, list]], args) -> list[dict]:
    """Print the plan (:func:`format_plan`), timed unless ``--no-estimate``, ``--launcher slurm`` or
    nothing is left to run; return its work list. A dry run downloads nothing."""
    datasets = check_plan([c for _, cfgs in parts for c in cfgs], fetch=not args.dry_run)
    work = plan_work([c for _, cfgs in parts for c in order_for_sharing(cfgs)], datasets)
    timed = not args.no_estimate and args.launcher != "slurm" and not all(w["finished"] for w in work)
    timings = estimate_work(work, datasets) if timed else None
    print(format_plan(work, parts, timings), flush=True)
    return work


def common_settings(args) -> dict:
    """The config settings that the CLI's flags give every run of the plan."""
    common = {"device": args.device, "data_root": args.data_root, "download": args.download, "dataset": args.dataset}
    for key in ("precision", "threads"):
        if getattr(args, key) is not None:
            common[key] = getattr(args, key)
    if args.compile:
        common.update(compile=True, compile_mode=args.compile)
    if args.accept_code_change:
        common["accept_code_change"] = True
    if args.tensorboard:
        common["tensorboard"] = True
    return common


def run_parts(args, parts: list, work: list[dict], out: Path, jobs: int | None, gpus: tuple) -> list[dict]:
    """Run the plan with the chosen launcher; the reports of its parts."""
    import launch

    if args.launcher == "inline":
        progress = GridProgress(work, args.quiet)
        reports = [run_grid(cfgs, args.quiet, out / f"report_{name.split()[0]}.json", progress)
                   for name, cfgs in parts]
        progress.close()
        return reports
    extra = dict(item.split("=", 1) if "=" in item else (item, True) for item in args.slurm_extra or ())
    lc = launch.LaunchConfig(args.launcher, jobs=jobs, retries=1 if args.retries is None else args.retries, gpus=gpus,
                             timeout_min=args.timeout_min, partition=args.partition,
                             gpus_per_job=1 if args.gpus_per_job is None else args.gpus_per_job, mem_gb=args.mem_gb,
                             slurm_extra=extra, wait=args.wait, job_name=f"ictta-{args.suite}-{args.profile}",
                             quiet=args.quiet)
    return [launch.launch([c for _, cfgs in parts for c in cfgs], lc, out / "jobs",
                          out / f"report_{args.suite}_{args.launcher}.json")]


LIST_OPTIONS = ("models", "scenarios", "methods", "seeds", "imb_factors")  # the plan's axes


def main(argv=None) -> int:
    import launch  # imports this module: not at the top

    parser = build_parser()
    args = parser.parse_args(argv)
    for name in LIST_OPTIONS:
        if getattr(args, name):
            setattr(args, name, unique(getattr(args, name)))
    _check_launcher_flags(parser, args)
    if args.launcher != "inline" or args.status:  # jobs may run elsewhere: absolute paths
        args.out = str(Path(args.out).resolve())
        args.data_root = args.data_root and str(Path(args.data_root).resolve())
    gpus = launch.visible_gpus(args.device) if args.launcher == "local" else ()
    jobs = args.jobs or (max(1, len(gpus)) if args.launcher == "local" else None)
    if args.threads is None and args.launcher == "local":
        args.threads = max(1, launch.cpu_count() // jobs)  # the jobs share the cores fairly
    common = common_settings(args)
    out = Path(_out_dir(args.out, args.profile, args.dataset))
    why_not = unwritable_folder(out)
    if why_not and (not args.status or nearest_existing(out).is_file()):  # --status only reads
        parser.error(f"--out {args.out}: {why_not}; give a folder you can write to")
    try:
        parts = plan_parts(args, common)
        if args.status:
            print(launch.format_status(launch.grid_status([c for _, cfgs in parts for c in cfgs], out / "jobs")))
            return 0
        work = show_plan(parts, args)
        if args.dry_run:
            return 0
        reports = run_parts(args, parts, work, out, jobs, gpus)
    except ValueError as e:
        parser.error(str(e))
    merged = {k: [x for r in reports for x in r[k]] for k in reports[0]
              if isinstance(reports[0][k], list)}
    if args.launcher != "inline":
        merged["launcher"] = args.launcher
    print(format_report(merged))
    if args.launcher == "slurm" and not args.wait:
        print(f"follow them with: python run_all_models.py {shlex.join(sys.argv[1:] if argv is None else argv)} --status")
        return 0
    print(f"results in {out}; next: python summary_tuning.py --results "
          f"{args.out} && python plots.py --results {args.out}")
    return 1 if merged["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
