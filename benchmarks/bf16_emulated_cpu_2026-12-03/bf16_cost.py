"""What bf16 autocast costs on a CPU without native bf16: train_one_epoch over the same batches in
bf16 and fp32, alternating in one process, on one thread; prints and writes the ratio of the medians
and what ``train_eval.bf16_is_emulated`` says of this CPU.

    python benchmarks/bf16_emulated_cpu_2026-12-03/bf16_cost.py [--model resnet10] [--repeats 3] [--steps 5]
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
from train_eval import bf16_is_emulated, train_one_epoch  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def timed_epoch(model, batches, precision: str) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    t0 = time.perf_counter()
    train_one_epoch(model, batches, opt, losses.focal_loss, lambda step: 0.01, 0, 10, precision=precision)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet10")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = get_model(args.model, 10).to(memory_format=torch.channels_last)
    batches = [(torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (128,))) for _ in range(args.steps)]
    for precision in PRECISIONS:
        timed_epoch(model, batches[:1], precision)  # warm-up
    times = {precision: [] for precision in PRECISIONS}
    for _ in range(args.repeats):
        for precision in PRECISIONS:
            times[precision].append(timed_epoch(model, batches, precision))
    med = {precision: statistics.median(t) for precision, t in times.items()}
    out = {"command": " ".join(sys.argv), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": platform.machine(), "processor": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "bf16_is_emulated": bf16_is_emulated(torch.device("cpu")), "torch": torch.__version__, "threads": 1,
           "model": args.model, "steps": args.steps, "batch": 128, "seconds": times,
           "median_s_per_step": {k: v / args.steps for k, v in med.items()},
           "ratio_bf16_over_fp32": med["bf16"] / med["fp32"]}
    path = Path(__file__).with_name(f"bf16_cost_{args.model}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{args.model}, one thread: {med['fp32'] / args.steps:.3f} s per step in fp32, {med['bf16'] / args.steps:.3f} s "
          f"in bf16; ratio {out['ratio_bf16_over_fp32']:.2f} (medians of {args.repeats}; bf16 emulated here: "
          f"{out['bf16_is_emulated']}); written: {path}")


if __name__ == "__main__":
    main()
