"""What SAM costs per training step: train_one_epoch over the same batches with sam_rho 0 and 0.5,
alternating in one process, on one thread; prints and writes the ratio of the medians. The
alternation puts any other load on the machine on both settings alike.

    python benchmarks/sam_cost_cpu_2026-12-03/sam_cost.py [--model resnet10] [--repeats 5] [--steps 10]
        [--precision bf16|fp32] [--out sam_cost.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import losses  # noqa: E402
from model import get_model  # noqa: E402
from results_logger import cpu_model  # noqa: E402
from train_eval import train_one_epoch  # noqa: E402


def timed_epoch(model, batches, rho: float, precision: str) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    t0 = time.perf_counter()
    train_one_epoch(model, batches, opt, losses.focal_loss, lambda step: 0.01, 0, 10, precision=precision,
                    sam_rho=rho)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet10")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--out", default="sam_cost.json", help="file name, written beside this script")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = get_model(args.model, 10).to(memory_format=torch.channels_last)
    batches = [(torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (128,))) for _ in range(args.steps)]
    timed_epoch(model, batches[:2], 0.0, args.precision)  # warm-up
    times = {0.0: [], 0.5: []}
    for _ in range(args.repeats):
        for rho in times:
            times[rho].append(timed_epoch(model, batches, rho, args.precision))
    med = {rho: statistics.median(t) for rho, t in times.items()}
    out = {"command": " ".join(sys.argv), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": platform.machine(), "processor": cpu_model(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "threads": 1,
           "model": args.model, "steps": args.steps, "batch": 128, "precision": args.precision,
           "seconds": {str(k): v for k, v in times.items()},
           "median_s_per_step": {str(k): v / args.steps for k, v in med.items()},
           "ratio_sam_over_plain": med[0.5] / med[0.0]}
    path = Path(__file__).with_name(args.out)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{args.model}, one thread, {args.precision}: {med[0.0] / args.steps:.3f} s per step without SAM, "
          f"{med[0.5] / args.steps:.3f} s with SAM; ratio {out['ratio_sam_over_plain']:.2f} (medians of "
          f"{args.repeats}); written: {path}")


if __name__ == "__main__":
    main()
