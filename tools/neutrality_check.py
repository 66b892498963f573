"""Is a code change numerically neutral? Run experiments/smoke.yaml (every suite and every
method) with two checkouts of the project, same data and one thread, and compare every number.

    git worktree add ../old HEAD~1                                       # the code before the change
    python tools/neutrality_check.py --old ../old                        # this checkout vs that one
    python tools/neutrality_check.py --old ../old --keep out/            # keep both result folders

The numbers are every CSV column that is not a setting or an identity (``run_id``, ``stage1_id``,
``seconds`` and the config fields): losses, metrics, learning rates and class weights, per epoch and
split. The verdict "neutral" needs every old run in the new results with the same rows and
bit-identical numbers in every old column; what the new code adds (runs of a new method, a new
metric's column) is listed beside it. Only
then may old results be kept across the change, with ``--accept-code-change`` (a run's JSON then
lists both code fingerprints). Exit status 0 when neutral, 1 when not.
"""
from __future__ import annotations

import argparse
import shlex
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules, from tools/
import cli
from config import TwoStageConfig

NOT_NUMBERS = {"run_id", "stage1_id", "exp_name", "seconds", "model", "scenario"} | {
    f.name for f in dataclasses.fields(TwoStageConfig)}
SMOKE_RUNS = (["experiments/smoke.yaml"],)  # every suite and every method, in seconds


def run_smoke(checkout: Path, out: Path, data_root: str | None, runs=SMOKE_RUNS) -> None:
    """The smoke experiment of ``checkout`` into ``out``, on one thread."""
    for args in runs:
        cmd = [sys.executable, "run_all_models.py", *args, "--out", str(out), "--device", "cpu",
               "--threads", "1", "--quiet"] + (["--data-root", data_root] if data_root else [])
        subprocess.run(cmd, cwd=checkout, check=True, stdout=subprocess.DEVNULL)


def numbers(folder: Path) -> dict[str, pd.DataFrame]:
    """Each run's CSV under ``folder``, reduced to its number columns."""
    out = {}
    for path in sorted(folder.rglob("results_*.csv")):
        df = pd.read_csv(path)
        out[path.name] = df[[c for c in df.columns if c not in NOT_NUMBERS]]
    return out


def differences(old: dict[str, pd.DataFrame], new: dict[str, pd.DataFrame]) -> list[str]:
    """What differs between two result sets, one line each; empty when every old run is in the new
    set with the same rows and bit-identical numbers in every old column (:func:`additions` lists
    what the new set adds: runs of a new method, a new metric's column)."""
    lines = [f"only in the old results: {n}" for n in sorted(set(old) - set(new))]
    for name in sorted(set(old) & set(new)):
        a, b = old[name], new[name]
        missing = [c for c in a.columns if c not in b.columns]
        if missing or len(a) != len(b):
            lines.append(f"{name}: columns or rows differ ({a.shape} vs {b.shape}; missing: {', '.join(missing)})")
            continue
        b = b[list(a.columns)]
        if not a.equals(b):
            cols = [c for c in a.columns if not a[c].equals(b[c])]
            lines.append(f"{name}: numbers differ in {', '.join(cols[:8])}")
    return lines


def additions(old: dict[str, pd.DataFrame], new: dict[str, pd.DataFrame]) -> list[str]:
    """What only the new result set has: whole runs, and columns of the runs both have."""
    lines = [f"new run: {n}" for n in sorted(set(new) - set(old))]
    added = sorted({c for n in set(old) & set(new) for c in new[n].columns if c not in old[n].columns})
    return lines + ([f"new columns in the common runs: {', '.join(added)}"] if added else [])


def verdict(old: dict[str, pd.DataFrame], new: dict[str, pd.DataFrame]) -> tuple[bool, str]:
    """Whether the old numbers survive the change, and what to print."""
    diff, extra = differences(old, new), additions(old, new)
    if diff:
        return False, "\n".join(diff)
    head = f"neutral: {len(old)} smoke runs, every number bit-identical"
    return True, "\n".join([head + (" (and what the new code adds:)" if extra else "")] + extra)


def main(argv=None) -> int:
    p = cli.ArgumentParser(description=cli.plain_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", required=True, help="the other checkout (e.g. a git worktree of the old commit)")
    p.add_argument("--new", default=str(Path(__file__).resolve().parents[1]), help="default: this checkout")
    p.add_argument("--data-root", help="dataset folder (default: each checkout's default)")
    p.add_argument("--keep", help="folder to keep both result sets in (default: a temporary one)")
    p.add_argument("--old-args", action="append", type=shlex.split, metavar="'ARGS'",
                   help="run_all_models.py arguments for the old checkout, quoted, when its command line "
                        "differs (once per command; default: experiments/smoke.yaml)")
    args = p.parse_args(argv)
    for side in ("old", "new"):
        if not (Path(getattr(args, side)) / "run_all_models.py").is_file():
            p.error(f"--{side} {getattr(args, side)}: no run_all_models.py there; give a checkout of this project")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        for side in ("old", "new"):
            try:
                runs = args.old_args if side == "old" and args.old_args else SMOKE_RUNS
                run_smoke(Path(getattr(args, side)).resolve(), base / side, args.data_root, runs)
            except subprocess.CalledProcessError as e:  # its own one-line error went to stderr above
                p.error(f"the smoke grid of --{side} failed (exit {e.returncode}): see its error above")
        neutral, text = verdict(numbers(base / "old"), numbers(base / "new"))
    print(text)
    return 0 if neutral else 1


if __name__ == "__main__":
    sys.exit(main())
