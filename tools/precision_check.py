"""Does the fast path cost accuracy? The same runs in fp32 and in the fast path, same seeds.

    python precision_check.py --seeds 0 1 2            # bf16 autocast vs fp32 on this machine
    python precision_check.py --fast-compile           # the fast path with torch.compile too

Each seed runs each method (``--methods``: by default the two-stage method, LDAM-DRW, whose
cosine logits are scaled by 30, and logit adjustment, whose offsets reach log(100)) twice on real
CIFAR-10-LT, identical but for ``precision`` (and ``compile`` with ``--fast-compile``), by default
at the budget of an experiment file (default: compare_reduced) on ResNet-10. The JSON (``--json``)
holds every run's final test metrics, the paired differences (fast minus fp32) and the
seed-to-seed spread of each path, and says whether the mean difference in test accuracy lies
within seed noise: ``|mean diff| <= 2 * standard error of the paired diffs`` and
``|mean diff| <=`` the larger of the two paths' standard deviations over seeds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules, from tools/
import data_loader
from cli import ArgumentParser, plain_text, unique, unwritable_file
from results_logger import git_commit, write_json
from config import TwoStageConfig, validate_config
from methods import METHODS as METHODS_REGISTRY
from run_all_models import experiment_path, load_experiment
from two_stage_ictta import run_two_stage

METRICS = ("acc", "macro_f1", "tail_macro_f1")
METHODS = ("two_stage_ictta", "ldam_drw", "logit_adjust")


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def compare(runs: dict[str, list[dict]]) -> dict:
    """Paired fast-minus-fp32 differences per metric, and the verdict on test accuracy."""
    out = {}
    for m in METRICS:
        fast, ref = [r[m] for r in runs["fast"]], [r[m] for r in runs["fp32"]]
        diffs = [a - b for a, b in zip(fast, ref)]
        (mf, sf), (mr, sr), (md, sd) = _mean_sd(fast), _mean_sd(ref), _mean_sd(diffs)
        se = sd / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
        out[m] = {"fast_mean": mf, "fast_sd": sf, "fp32_mean": mr, "fp32_sd": sr,
                  "diff_mean": md, "diff_sd": sd, "diff_se": se, "diffs": diffs}
    a = out["acc"]
    noise = max(a["fast_sd"], a["fp32_sd"])
    out["acc_within_seed_noise"] = bool(abs(a["diff_mean"]) <= 2 * a["diff_se"] and abs(a["diff_mean"]) <= noise)
    return out


def main(argv=None) -> int:
    p = ArgumentParser(description=plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--model", default="resnet10")
    p.add_argument("--experiment", default="compare_reduced",
                   help="the experiment file (or its name) whose settings are each run's budget (default: %(default)s)")
    p.add_argument("--fast-precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--fast-compile", action="store_true", help="also torch.compile the fast path")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--data-root")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=tuple(METHODS_REGISTRY))
    p.add_argument("--out", default="results/precision", help="folder of the runs")
    p.add_argument("--json", default="results/precision/precision_check.json",
                   help="where the summary goes (the committed benchmarks/ files change only when named here)")
    args = p.parse_args(argv)
    args.seeds = unique(args.seeds)
    if len(args.seeds) < 2:
        p.error("--seeds: give at least 2 different seeds, or seed noise cannot be measured")

    try:
        budget = load_experiment(experiment_path(args.experiment)).settings
    except ValueError as e:
        p.error(str(e))
    base = dict(budget, device=args.device, data_root=args.data_root,
                threads=args.threads, log_dir=args.out, quiet=True)
    paths = {"fp32": dict(precision="fp32", compile=False),
             "fast": dict(precision=args.fast_precision, compile=args.fast_compile)}
    why_not = unwritable_file(args.json)
    if why_not:
        p.error(f"--json {args.json}: {why_not}; give a file path you can write")
    try:  # every setting and the data, before the first run; a run's own errors keep their traceback
        plans = {method: _pair_configs(args, base, paths, method) for method in args.methods}
        for configs in plans.values():
            for cfg in configs.values():
                validate_config(cfg)
        data_loader.load_dataset(args.data_root)
    except ValueError as e:  # a bad setting, or no dataset at --data-root
        p.error(str(e))
    runs = {method: _run_pairs(configs) for method, configs in plans.items()}
    comparison = {method: compare(r) for method, r in runs.items()}
    report = {
        "command": "python " + " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit(),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "setup": {"model": args.model, "experiment": args.experiment, "config": {k: v for k, v in base.items()},
                  "fast": paths["fast"], "reference": paths["fp32"], "metric": "final stage-2 test metrics"},
        "runs": runs, "comparison": comparison}
    write_json(args.json, report)
    for method, result in comparison.items():
        a = result["acc"]
        print(f"{method}: test acc fast {100 * a['fast_mean']:.2f} ± {100 * a['fast_sd']:.2f}, fp32 "
              f"{100 * a['fp32_mean']:.2f} ± {100 * a['fp32_sd']:.2f}, paired diff {100 * a['diff_mean']:+.2f} "
              f"± {100 * a['diff_se']:.2f} (s.e.); within seed noise: {result['acc_within_seed_noise']}")
    print(f"wrote {args.json}")
    return 0


def _tag(precision: str, compile: bool) -> str:
    return f"{precision}{'-compile' if compile else ''}"


def _pair_configs(args, base: dict, paths: dict, method: str) -> dict[tuple, TwoStageConfig]:
    """``(seed, path name) -> config`` of ``method``: each seed on every path."""
    configs = {}
    for seed in args.seeds:
        for name, settings in paths.items():
            configs[seed, name] = TwoStageConfig(args.model, "long_tail", seed=seed, method=method,
                                                 exp_name=f"precision-{method}-{_tag(**settings)}", **base, **settings)
    return configs


def _run_pairs(configs: dict[tuple, TwoStageConfig]) -> dict[str, list[dict]]:
    """Run each config: final stage-2 test metrics per path, in seed order."""
    runs: dict[str, list[dict]] = {}
    for (seed, name), cfg in configs.items():
        test = run_two_stage(cfg)["stage2"]["final"]["test"]
        runs.setdefault(name, []).append({"seed": seed, **{m: test[m] for m in METRICS}})
        metrics = "  ".join(f"{m} {100 * test[m]:.2f}" for m in METRICS)
        print(f"{cfg.method} seed {seed} {_tag(cfg.precision, cfg.compile):>14}: {metrics}", flush=True)
    return runs


if __name__ == "__main__":
    sys.exit(main())
