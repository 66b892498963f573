"""Copy the CSV and JSON of every finished run under some results folders into one folder, to commit
beside its tables; checkpoints, saved models and unfinished runs stay where they are.

    python tools/collect_finished.py ~/results/new ~/results/dyn --into benchmarks/literature_cpu/runs

Standard library only. A run counts as finished when its JSON says so; a file of the same name
already in --into is replaced only when it differs, and the names of the copies are printed.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import sys
from pathlib import Path


def finished_runs(folder: Path) -> list[Path]:
    """The JSONs under ``folder`` (any depth) of runs whose status is finished and that have a CSV."""
    found = []
    for record in sorted(folder.rglob("results_*.json")):
        try:
            status = json.loads(record.read_text()).get("status")
        except (OSError, ValueError):
            continue  # being written, or not a run's JSON
        if status == "finished" and record.with_suffix(".csv").is_file():
            found.append(record)
    return found


def collect(folders: list[Path], into: Path) -> list[str]:
    """Copy each finished run's CSV and JSON into ``into``; the names of the files copied."""
    into.mkdir(parents=True, exist_ok=True)
    copied = []
    for folder in folders:
        for record in finished_runs(folder):
            for src in (record.with_suffix(".csv"), record):
                dst = into / src.name
                if not dst.exists() or not filecmp.cmp(src, dst, shallow=False):
                    shutil.copy2(src, dst)
                    copied.append(src.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="results folders to search (any depth)")
    p.add_argument("--into", type=Path, required=True, help="folder that receives the copies")
    args = p.parse_args(argv)
    if missing := [str(f) for f in args.folders if not f.is_dir()]:
        p.error(f"not a folder: {', '.join(missing)}")
    for name in collect(args.folders, args.into):
        print(f"copied {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
