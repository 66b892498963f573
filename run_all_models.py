"""The experiment grid: every model x scenario x configuration x seed, resumable.

Suites (``--suite``):

* ``grid`` (the default): :func:`run_baseline_all_models` (the two-stage method with its default
  settings, plus a same-budget control for each: the same stage 1, then stage 2 with
  ``dynamic_mode="none"`` and cross-entropy) followed by :func:`run_tuning_resnets` (the stage-2
  knobs of :data:`TUNING_GRID` on the ResNets).
* ``compare``: :data:`COMPARE_METHODS`, the field's methods beside ours on the same data, model,
  schedule and seeds.

Every run is :func:`two_stage_ictta.run_two_stage` with a config built here: a finished run is
skipped, a killed one resumes from its last epoch, and runs that share a stage 1 train it once
(they are ordered so that the first of them does). Results go to ``<out>/<profile>/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from data_loader import load_dataset
from results_logger import write_json
from two_stage_ictta import METHODS, TwoStageConfig, run_two_stage, stage1_hash, validate_config

BASELINE_MODELS = ("simplecnn", "resnet10", "resnet15", "resnet20")
TUNING_MODELS = ("resnet10", "resnet15", "resnet20")
SCENARIOS = ("long_tail", "head_tail")
COMPARE_METHODS = ("ce", "focal", "rw", "cb_focal", "drw", "ldam_drw", "logit_adjust",
                   "balanced_softmax", "crt", "tau_norm", "two_stage_ictta")

# Stage-2 knobs of the tuning grid. Profile "full" runs their product; the others vary one knob at
# a time around the defaults (``tuning="one_at_a_time"``), which is what a 2-core CPU affords.
TUNING_GRID = {
    "stage2_lr": (0.003, 0.01, 0.03),
    "weight_range": ((1.0, 4.0), (1.0, 8.0), (1.0, 16.0)),  # (min_weight, max_weight)
    "stage2_focal_gamma": (0.0, 1.5, 3.0),
    "dynamic_mode": ("loss", "val_loss", "val_error"),
}

# A profile: overrides of TwoStageConfig plus what the suites run.
PROFILES = {
    "smoke": {  # seconds on synthetic data, for tests
        "config": dict(stage1_epochs=1, stage2_epochs=1, imb_factor=0.1, n_max=40, val_per_class=5,
                       batch_size=32, eval_batch_size=256),
        "tuning": "one_at_a_time", "tuning_limit": 1,
        "compare_models": ("resnet10",), "compare_scenarios": (("long_tail", 0.1),),
    },
    "quick": {  # the whole baseline set in well under an hour on a 2-core CPU
        "config": dict(stage1_epochs=12, stage2_epochs=8, n_max=1500, eval_every=2),
        "tuning": "one_at_a_time",
        "compare_models": ("resnet20",), "compare_scenarios": (("long_tail", 0.01),),
    },
    "full": {  # the seed project's 20 + 20 epochs on all the data
        "config": dict(),
        "tuning": "product",
        "compare_models": ("resnet32",), "compare_scenarios": (("long_tail", 0.01), ("head_tail", 0.01)),
    },
    "reduced": {  # the literature recipe scaled to 30 epochs, for the comparison during development
        "config": dict(stage1_epochs=24, stage2_epochs=6, stage1_lr=0.1, stage2_lr=0.1, schedule="step",
                       lr_milestones=(24, 27), warmup_epochs=1.0, eval_every=3),
        "tuning": "one_at_a_time",
        "compare_models": ("resnet20",), "compare_scenarios": (("long_tail", 0.01),),
    },
    "literature": {  # Cao et al. 2019's recipe: ResNet-32, 200 epochs, DRW / stage 2 from epoch 160
        "config": dict(stage1_epochs=160, stage2_epochs=40, stage1_lr=0.1, stage2_lr=0.1, schedule="step",
                       lr_milestones=(160, 180), warmup_epochs=5.0, weight_decay=2e-4, batch_size=128,
                       eval_every=10),
        "tuning": "one_at_a_time",
        "compare_models": ("resnet32",),
        "compare_scenarios": (("long_tail", 0.01), ("head_tail", 0.01), ("long_tail", 0.02), ("long_tail", 0.1)),
    },
}


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def tuning_points(profile: str) -> list[dict]:
    """Stage-2 settings of the tuning grid for a profile, the default point excluded (the
    baseline run is that point)."""
    defaults = {f.name: f.default for f in dataclasses.fields(TwoStageConfig)}
    base = {"stage2_lr": defaults["stage2_lr"], "weight_range": (defaults["min_weight"], defaults["max_weight"]),
            "stage2_focal_gamma": defaults["stage2_focal_gamma"], "dynamic_mode": defaults["dynamic_mode"]}
    if PROFILES[profile]["tuning"] == "product":
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
    return TwoStageConfig(model, scenario, seed=seed, tag=f"{suite}-{profile}", **overrides)


def plan_baseline(profile="full", models=BASELINE_MODELS, scenarios=SCENARIOS, seeds=(0,), **common):
    """Two-stage runs with default settings, each followed by its same-budget control."""
    return [cfg for seed in seeds for model in models for scenario in scenarios for cfg in (
        _config(profile, "baseline", model, scenario, seed, common, exp_name="baseline"),
        _config(profile, "baseline", model, scenario, seed, common, exp_name="control",
                dynamic_mode="none", stage2_loss_type="ce"))]


def plan_tuning(profile="full", models=TUNING_MODELS, scenarios=SCENARIOS, seeds=(0,), **common):
    return [_config(profile, "tuning", model, scenario, seed, common, **_tuning_settings(point))
            for seed in seeds for model in models for scenario in scenarios for point in tuning_points(profile)]


def plan_compare(profile="reduced", models=None, scenarios=None, seeds=(0, 1, 2), methods=COMPARE_METHODS,
                 imb_factors=None, **common):
    """Every method on every (scenario, imb_factor) case of the profile; ``scenarios`` and
    ``imb_factors`` keep only the matching cases."""
    spec = PROFILES[profile]
    cases = [c for c in spec["compare_scenarios"] if (scenarios is None or c[0] in scenarios)
             and (imb_factors is None or any(abs(c[1] - f) < 1e-12 for f in imb_factors))]
    if not cases:
        raise ValueError(f"no compare case of profile {profile!r} matches scenarios={scenarios} "
                         f"imb_factors={imb_factors}; its cases: {spec['compare_scenarios']}")
    return [_config(profile, "compare", model, scenario, seed, common, method=method, imb_factor=imb)
            for seed in seeds for model in (models or spec["compare_models"]) for scenario, imb in cases
            for method in methods]


def order_for_sharing(configs: list[TwoStageConfig]) -> list[TwoStageConfig]:
    """Stable order in which runs sharing a stage 1 are adjacent: the first trains it, the rest reuse it."""
    first_seen: dict[str, int] = {}
    for i, cfg in enumerate(configs):
        first_seen.setdefault(stage1_hash(cfg), i)
    return sorted(configs, key=lambda c: first_seen[stage1_hash(c)])


def describe(cfg: TwoStageConfig) -> str:
    return f"{cfg.tag} {cfg.exp_name or cfg.method} {cfg.model_name}/{cfg.imbalance_type}@{cfg.imb_factor:g} seed{cfg.seed}"


def run_grid(configs: list[TwoStageConfig], quiet: bool = False, report_path: str | Path | None = None) -> dict:
    """Run every config in turn (inline), never stopping at a failure; return and write a report
    of the runs done, skipped (finished before), resumed and failed, with the reasons."""
    for cfg in configs:
        validate_config(cfg)  # a typo fails here, before hours of work, not at run 57
    for root in {cfg.data_root for cfg in configs}:
        load_dataset(root)  # so does missing data (a DataError, which is a ValueError); also fills the cache
    configs = order_for_sharing(configs)
    report = {"done": [], "skipped": [], "resumed": [], "failed": [], "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    bar = tqdm(configs, desc="grid", unit="run", disable=quiet, dynamic_ncols=True)
    for cfg in bar:
        bar.set_postfix_str(describe(cfg))
        try:
            res = run_two_stage(dataclasses.replace(cfg, quiet=quiet or cfg.quiet))
        except Exception as e:  # a failed run is reported, and the grid goes on
            report["failed"].append({"run": describe(cfg), "error": f"{type(e).__name__}: {e}"})
            tqdm.write(f"FAILED {describe(cfg)}: {type(e).__name__}: {e}")
            if not isinstance(e, (ValueError, FloatingPointError, RuntimeError)):
                traceback.print_exc()
            continue
        if res.get("skipped"):
            report["skipped"].append(describe(cfg))
        else:
            report["done"].append(describe(cfg))
            if res.get("resumed_from"):
                report["resumed"].append(f"{describe(cfg)} (from stage {res['resumed_from'][0]} "
                                         f"epoch {res['resumed_from'][1]})")
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if report_path is not None:
        write_json(report_path, report)
    return report


def format_report(report: dict) -> str:
    lines = [f"grid: {len(report['done'])} done ({len(report['resumed'])} resumed), "
             f"{len(report['skipped'])} skipped (finished before), {len(report['failed'])} failed"]
    lines += [f"  resumed: {r}" for r in report["resumed"]]
    lines += [f"  FAILED {f['run']}: {f['error']}" for f in report["failed"]]
    return "\n".join(lines)


def _out_dir(out, profile) -> str:
    return str(Path(out) / profile)


def run_baseline_all_models(profile="full", models=BASELINE_MODELS, scenarios=SCENARIOS, seeds=(0,),
                            out="results", quiet=False, **common) -> dict:
    """Every baseline model on every scenario: two-stage method + same-budget control."""
    configs = plan_baseline(profile, models, scenarios, seeds, log_dir=_out_dir(out, profile), **common)
    return run_grid(configs, quiet, Path(_out_dir(out, profile)) / "report_baseline.json")


def run_tuning_resnets(profile="full", models=TUNING_MODELS, scenarios=SCENARIOS, seeds=(0,),
                       out="results", quiet=False, **common) -> dict:
    """The stage-2 tuning grid on the ResNets (stage 1 shared with the baseline runs)."""
    configs = plan_tuning(profile, models, scenarios, seeds, log_dir=_out_dir(out, profile), **common)
    return run_grid(configs, quiet, Path(_out_dir(out, profile)) / "report_tuning.json")


def run_compare(profile="reduced", models=None, scenarios=None, seeds=(0, 1, 2), methods=COMPARE_METHODS,
                imb_factors=None, out="results", quiet=False, **common) -> dict:
    """The field's methods and ours, same data, model, schedule and seeds."""
    configs = plan_compare(profile, models, scenarios, seeds, methods, imb_factors,
                           log_dir=_out_dir(out, profile), **common)
    return run_grid(configs, quiet, Path(_out_dir(out, profile)) / "report_compare.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--suite", choices=("grid", "compare"), default="grid",
                   help="grid: baseline + control + tuning (default); compare: the methods side by side")
    p.add_argument("--profile", choices=tuple(PROFILES), default="full",
                   help="settings: smoke (seconds), quick (< 1 h CPU), full (20+20 epochs), "
                        "reduced (30-epoch literature recipe), literature (200 epochs)")
    p.add_argument("--models", nargs="+", help="models (default: the suite's)")
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS, help="scenarios (default: both)")
    p.add_argument("--methods", nargs="+", choices=tuple(METHODS), help="compare suite: methods (default: all)")
    p.add_argument("--seeds", nargs="+", type=int, help="seeds (default: 0 for grid, 0 1 2 for compare)")
    p.add_argument("--data-root", help="dataset folder (default: $CIFAR10_ROOT, else data/cifar10)")
    p.add_argument("--out", default="results", help="results folder; runs go to OUT/PROFILE/")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("bf16", "fp32"), help="override the precision (default: bf16)")
    p.add_argument("--threads", type=int, help="CPU threads per run")
    p.add_argument("--imb-factors", nargs="+", type=float,
                   help="imbalance factors (grid: run at each; compare: keep only these cases)")
    p.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the training forward (MODE: default, reduce-overhead, ...)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common = {"device": args.device, "data_root": args.data_root}
    for key in ("precision", "threads"):
        if getattr(args, key) is not None:
            common[key] = getattr(args, key)
    if args.compile:
        common.update(compile=True, compile_mode=args.compile)
    kw = dict(profile=args.profile, out=args.out, quiet=args.quiet, **common)
    if args.scenarios:
        kw["scenarios"] = tuple(args.scenarios)
    try:
        if args.suite == "compare":
            reports = [run_compare(models=args.models, seeds=tuple(args.seeds or (0, 1, 2)),
                                   methods=tuple(args.methods or COMPARE_METHODS),
                                   imb_factors=args.imb_factors, **kw)]
        else:
            seeds = tuple(args.seeds or (0,))
            reports = []
            for imb in args.imb_factors or [None]:
                extra = {} if imb is None else {"imb_factor": imb}
                reports += [run_baseline_all_models(models=tuple(args.models or BASELINE_MODELS), seeds=seeds,
                                                    **kw, **extra),
                            run_tuning_resnets(models=tuple(m for m in (args.models or TUNING_MODELS)
                                                            if m.startswith("resnet")), seeds=seeds, **kw, **extra)]
    except ValueError as e:
        parser.error(str(e))
    merged = {k: [x for r in reports for x in r[k]] for k in ("done", "skipped", "resumed", "failed")}
    print(format_report(merged))
    print(f"results in {_out_dir(args.out, args.profile)}; next: python summary_tuning.py --results "
          f"{args.out} && python plots.py --results {args.out}")
    return 1 if merged["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
