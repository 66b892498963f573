"""Copy the CSV and JSON of every finished run under some results folders into one folder, to commit
beside its tables; checkpoints, saved models and unfinished runs stay where they are.

    python tools/collect_finished.py ~/results/new ~/results/dyn --into benchmarks/literature_cpu/runs
    python tools/collect_finished.py ~/results/new --runs drw_sam --into benchmarks/sam_pairs/runs

Standard library only. A run counts as finished when its JSON says so. A file already in --into is
left alone when it is the same; where a run's CSV or JSON differs from the file there (another run
of the same name, from another machine or code), that file is kept, named, and neither of the run's
files is copied, unless --replace.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
from pathlib import Path


def finished_runs(folder: Path, runs: set[str] | None = None) -> list[Path]:
    """The JSONs under ``folder`` (any depth) of runs whose status is finished and that have a CSV;
    with ``runs``, only those whose run name (``exp_name``, else the method) is in it."""
    found = []
    for record in sorted(folder.rglob("results_*.json")):
        try:
            meta = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # being written, or not a run's JSON
        if meta.get("status") == "finished" and record.with_suffix(".csv").is_file() and (
                runs is None or run_name_of(meta) in runs):
            found.append(record)
    return found


def run_name_of(meta: dict) -> str | None:
    """A run's name as an experiment's ``--runs`` names it: its ``exp_name``, else its method."""
    config = meta.get("config") or {}
    return config.get("exp_name") or config.get("method") or meta.get("method")


def collect(folders: list[Path], into: Path, runs: set[str] | None = None,
            replace: bool = False) -> tuple[list[str], list[str]]:
    """Copy each finished run's CSV and JSON into ``into``: the names of the files copied, and of
    those kept because a different file of that name was there. A run travels whole: where either
    of its files differs from the one there, neither is copied (both are, with ``replace``)."""
    into.mkdir(parents=True, exist_ok=True)
    copied, kept = [], []
    for folder in folders:
        for record in finished_runs(folder, runs):
            pair = [(src, into / src.name) for src in (record.with_suffix(".csv"), record)]
            new = [(src, dst) for src, dst in pair if not dst.exists() or not filecmp.cmp(src, dst, shallow=False)]
            clash = [dst.name for src, dst in new if dst.exists()]
            if clash and not replace:
                kept += clash
                continue
            for src, dst in new:
                shutil.copy2(src, dst)
                copied.append(src.name)
    return copied, kept


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="results folders to search (any depth)")
    p.add_argument("--into", type=Path, required=True, help="folder that receives the copies")
    p.add_argument("--runs", nargs="+", metavar="NAME", help="only these runs (exp_name, else the method)")
    p.add_argument("--replace", action="store_true",
                   help="replace a file of --into that differs from the run's (default: keep it and say so)")
    args = p.parse_args(argv)
    if missing := [str(f) for f in args.folders if not f.is_dir()]:
        p.error(f"not a folder: {', '.join(missing)}")
    copied, kept = collect(args.folders, args.into, set(args.runs) if args.runs else None, args.replace)
    for name in copied:
        print(f"copied {name}")
    for name in kept:
        print(f"kept {args.into / name}: another run of that name differs from it; "
              f"--replace to take the new one, or --into another folder")
    return 1 if kept else 0


if __name__ == "__main__":
    sys.exit(main())
