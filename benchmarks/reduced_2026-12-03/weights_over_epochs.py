"""The stage-2 class weights of the default two-stage run and of the chosen variant, every epoch:
seed 0 again with eval_every=1 (weights_runs.sh), since the study's runs log them every 4th epoch.

    python benchmarks/reduced_2026-12-03/weights_over_epochs.py
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
import matplotlib  # noqa: E402

import plots  # noqa: E402
import summary_tuning as st  # noqa: E402

t = st.build_tables(HERE / "weights_runs")
agg = t["agg"].set_index("config_id")
panels = []
for label, exp in (("default two-stage run", "two_stage_ictta"),
                   ("chosen on validation: abl-dyn-power2-val-loss-la", "abl-dyn-power2-val-loss-la")):
    cid = t["summary"].loc[t["summary"]["exp_name"] == exp, "config_id"].iloc[0]
    panels.append((f"{label} (seed 0)", plots._runs_of(cid, t["summary"], t["rows"]), agg.loc[cid]))
out = HERE.parents[1] / "figures" / "reduced_2026-12-03" / "ablation" / "weights_over_epochs_seed0.png"
with matplotlib.rc_context(plots.STYLE):
    plots.plot_weights_side_by_side(panels, st.class_counts_of(panels[0][1]),
                                    "Stage-2 class weights per epoch, resnet10, long-tail (imbalance 0.01)", [],
                                    out, [])
print(f"written: {out}")
