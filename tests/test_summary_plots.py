"""summary_tuning.py and plots.py on hand-made result CSVs (no training).

``write_run`` writes one run's CSV with the columns two_stage_ictta.run_two_stage writes; the
metrics come from a small formula unless a test pins them down by hand.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import plots
import summary_tuning as st

C = 10
IDENTITY = dict(  # the CSV's identity columns, in its order, at the grid's quick-profile values
    run_id="", stage1_id="", exp_name="baseline", model="resnet10", scenario="long_tail", stage1_epochs=3,
    stage2_epochs=3, imb_factor=0.01, batch_size=128, stage1_lr=0.1, stage2_lr=0.01, min_weight=1.0,
    max_weight=8.0, ema_alpha=0.8, stage2_loss_type="focal", stage2_focal_gamma=1.5, dynamic_mode="loss",
    method="two_stage_ictta", seed=0, device="auto", val_per_class=100, n_max=1500, momentum=0.9,
    weight_decay=2e-4, warmup_epochs=1.0, schedule="cosine", lr_milestones="(160, 180)", focal_gamma=1.0,
    cb_beta=0.9999, ldam_max_margin=0.5, ldam_scale=30.0, la_tau=1.0, precision="bf16", channels_last=True,
    compile=False, eval_every=1, tag="baseline-quick")
METRICS = ("loss", "acc", "macro_f1", "tail_macro_f1", "head_macro_f1", "many_acc", "medium_acc", "few_acc")


def _hash(d: dict) -> str:
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def write_run(folder: Path, values=None, splits=("test", "val"), upto=None, **identity) -> Path:
    """Write one run's CSV into ``folder``; return its path.

    ``values(stage, epoch, split) -> dict`` overrides the formula's metrics; ``upto=(stage, epoch)``
    stops the run there (a run still training)."""
    ident = {**IDENTITY, **identity}
    ident["run_id"] = _hash({k: v for k, v in ident.items() if k not in ("tag", "run_id", "stage1_id")})
    ident["stage1_id"] = _hash({k: ident[k] for k in ("model", "scenario", "seed", "stage1_epochs", "imb_factor")})
    bonus = {"control": 0.0, "baseline": 0.03}.get(ident["exp_name"], 0.01 * len(ident["exp_name"]) % 0.05)
    rows = []
    for stage, n in ((1, ident["stage1_epochs"]), (2, ident["stage2_epochs"])):
        for epoch in range(1, n + 1):
            if upto and (stage, epoch) > upto:
                break
            g = epoch + (ident["stage1_epochs"] if stage == 2 else 0)
            for split in splits:
                base = 0.2 + 0.03 * g + 0.01 * ident["seed"] + (bonus if stage == 2 else 0.0) + (0.005 if split == "val" else 0)
                f1 = [max(0.0, base + 0.3 - 0.06 * c) for c in range(C)]
                row = {**ident, "stage": stage, "epoch": epoch, "global_epoch": g, "split": split, "lr": 0.01,
                       "train_loss": 1.0, "seconds": 1.0, "loss": 2.0 - base, "acc": base + 0.1, "macro_f1": base,
                       "tail_macro_f1": base - 0.1, "head_macro_f1": base + 0.1, "many_acc": base + 0.3,
                       "medium_acc": base, "few_acc": base - 0.15}
                row.update({f"f1_{c}": f for c, f in enumerate(f1)})
                row.update({f"acc_{c}": f for c, f in enumerate(f1)})
                row.update({f"w_{c}": (1.0 if stage == 1 else 1.0 + 0.5 * c + 0.05 * epoch) for c in range(C)})
                if values:
                    row.update(values(stage, epoch, split))
                rows.append(row)
    name = (f"results_{ident['exp_name']}_{ident['model']}_{ident['scenario']}_imb{ident['imb_factor']:g}"
            f"_seed{ident['seed']}.csv")
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / name, index=False)
    return folder / name
