"""airbench93 on this project's copy of CIFAR-10, on a CPU in fp32: what the JPEG copy costs a
fast recipe on balanced CIFAR-10.

airbench93 (Keller Jordan, KellerJordan/cifar10-airbench; PyPI package ``airbench`` 0.1.8)
publishes a mean of 93.00 % test accuracy over 50 runs on the lossless CIFAR-10 (the comment
"93.00 in n=50" heading its ``lib_airbench93.py``), on a GPU in fp16, with test-time augmentation
(mirror and translate). This script downloads that package's source into ``--work``, changes it
only where a CPU needs it, and runs it once:

* the network and the images in fp32 instead of fp16, on the CPU instead of CUDA
  (``net.half().cuda()`` -> ``net.float()``, the loader's ``.half()`` -> ``.float()``, its
  ``map_location`` -> ``"cpu"``; CUDA timing events replaced by wall-clock ones);
* the data: our JPEG copy's images as the package's ``train.pt`` / ``test.pt`` (uint8 NHWC, labels
  and class names in CIFAR-10's order), the training images in a random order drawn from
  ``--seed`` (the original files are in no class order; airbench fits its whitening layer on the
  first 5,000 training images, so a class-sorted order would bias it);
* ``torch.manual_seed(--seed)`` first, so the run is repeatable on one machine (the package seeds
  nothing).

Nothing of the package's code is kept in this repository. Writes ``airbench93_cpu.json`` (the
accuracies, command, machine and date) and ``airbench93_cpu.log`` (the package's own per-epoch
table) beside this file, or under ``--out``.

    python benchmarks/airbench_cpu_2026-12-06/airbench93_cpu.py --data ~/data/cifar10 --work /tmp/airbench
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from data_loader import load_dataset  # noqa: E402
from results_logger import cpu_model  # noqa: E402

PACKAGE = "airbench==0.1.8"
PUBLISHED = {"mean_test_acc_tta": 93.00, "runs": 50, "source": "the comment '93.00 in n=50' in "
             "airbench/lib_airbench93.py (KellerJordan/cifar10-airbench), lossless CIFAR-10, GPU, fp16"}
# (file, text, replacement, how many times the text occurs): every change made to the package
CPU_CHANGES = [
    ("lib_airbench93.py", "net = net.half().cuda()", "net = net.float()", 1),
    ("utils.py", "map_location=torch.device(gpu)", "map_location='cpu'", 1),
    ("utils.py", "self.images.half()", "self.images.float()", 1),
]


class WallClockEvent:
    """Stands in for ``torch.cuda.Event(enable_timing=True)`` on a CPU."""

    def __init__(self, enable_timing: bool = True):
        self.t = None

    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end: "WallClockEvent") -> float:
        return 1e3 * (end.t - self.t)  # milliseconds, as CUDA events give them


class Tee(io.StringIO):
    """Keeps what is written and passes it on to ``stream``: the package's table shows as it runs."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.stream.flush()
        return super().write(text)


def fetch_package(work: Path) -> Path:
    """Download the package's source distribution into ``work`` and unpack it; its package folder."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--no-binary", ":all:",
                           "-d", str(work)], capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"could not download {PACKAGE} from PyPI ({last}); check the network or pip's index")
    sdist = next(work.glob("airbench-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    return work / sdist.name.removesuffix(".tar.gz") / "airbench"


def apply_cpu_changes(package: Path) -> None:
    """Make :data:`CPU_CHANGES` in the unpacked package, failing if its code is not as expected."""
    for name, text, replacement, count in CPU_CHANGES:
        path = package / name
        source = path.read_text()
        if source.count(text) != count:
            raise SystemExit(f"{name}: expected {count} x {text!r}, found {source.count(text)}")
        path.write_text(source.replace(text, replacement))


def write_dataset(data_root: Path, folder: Path, seed: int) -> str:
    """Our CIFAR-10 copy as the package's ``train.pt`` / ``test.pt``; returns the data's source."""
    data = load_dataset(data_root)
    order = np.random.default_rng(seed).permutation(len(data.train_y))
    folder.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", data.train_x[order], data.train_y[order]), ("test", data.test_x, data.test_y)):
        torch.save({"images": torch.from_numpy(np.ascontiguousarray(x)), "labels": torch.from_numpy(y),
                    "classes": list(data.classes)}, folder / f"{split}.pt")
    return data.source


def run_airbench(package: Path, seed: int) -> tuple[dict, str]:
    """Train airbench93 once from the working folder (it reads ``cifar10/``); accuracies and log."""
    torch.cuda.Event, torch.cuda.synchronize = WallClockEvent, (lambda *a, **k: None)
    sys.path.insert(0, str(package.parent))
    import airbench  # the unpacked, changed package
    torch.manual_seed(seed)
    log = Tee(sys.stdout)
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        model = airbench.train93()
    seconds = time.perf_counter() - start
    test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    accuracy = {f"test_acc_tta{level}": 100 * airbench.evaluate(model, test, tta_level=level) for level in (0, 1, 2)}
    return {**accuracy, "seconds": round(seconds, 1)}, log.getvalue()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="our CIFAR-10 folder (train/, test/)")
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder for the package and data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    args.work, args.out = args.work.resolve(), args.out.resolve()  # the run changes directory
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    package = fetch_package(args.work)
    apply_cpu_changes(package)
    source = write_dataset(args.data, args.work / "cifar10", args.seed)
    started = datetime.now(timezone.utc)
    os.chdir(args.work)
    result, log = run_airbench(package, args.seed)
    record = {"result": result, "published": PUBLISHED, "package": PACKAGE,
              "changes": [dict(zip(("file", "text", "replacement"), c[:3])) for c in CPU_CHANGES],
              "data": source, "seed": args.seed, "threads": args.threads,
              "command": shlex.join(["python", *sys.argv]), "started_utc": started.isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "host": platform.node()}, "torch": torch.__version__, "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "airbench93_cpu.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "airbench93_cpu.log").write_text(log)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
