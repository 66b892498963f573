"""Do the GPU's tuning runs agree with the CPU's? Two checks over the committed summaries:

1. the GPU's default runs against the CPU's baseline runs (the same settings and seeds; each trains
   its own stage 1): test macro-F1, difference of means with a Welch 95% interval;
2. the CPU's seed-0 tuning points against the GPU's 3-seed paired differences: the same sign, and
   inside the GPU's interval?

python benchmarks/gpu_h200_2026-11-28/cross_device_check.py > benchmarks/gpu_h200_2026-11-28/cross_device_check.txt
"""
from pathlib import Path

import pandas as pd
from scipy import stats

BENCH = Path(__file__).resolve().parent.parent
GPU, CPU = BENCH / "gpu_h200_2026-11-28" / "summary", BENCH / "full_cpu_2026-11-27"


def default_runs() -> pd.DataFrame:
    gpu = pd.read_csv(GPU / "summary_tuning.csv")
    cpu = pd.read_csv(CPU / "summary_tuning.csv")
    rows = []
    for (model, scenario), g in gpu[gpu.role == "two_stage"].groupby(["model", "scenario"]):
        c = cpu[(cpu.role == "two_stage") & (cpu.model == model) & (cpu.scenario == scenario)]
        x, y = 100 * g.s2_final_test_macro_f1.to_numpy(), 100 * c.s2_final_test_macro_f1.to_numpy()
        ci = stats.ttest_ind(x, y, equal_var=False).confidence_interval()
        rows.append(dict(model=model, scenario=scenario, gpu=f"{x.mean():.1f} ± {x.std(ddof=1):.1f} (n={len(x)})",
                         cpu=f"{y.mean():.1f} ± {y.std(ddof=1):.1f} (n={len(y)})",
                         gpu_minus_cpu=f"{x.mean() - y.mean():+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]"))
    return pd.DataFrame(rows)


def seed0_points() -> pd.DataFrame:
    keep = lambda d: d[(d.comparison == "tuning_vs_default") & (d.metric == "macro_f1") & (d.split == "test")]
    gpu = keep(pd.read_csv(GPU / "paired_differences.csv"))
    cpu = keep(pd.read_csv(CPU / "tuning" / "paired_differences.csv"))
    m = cpu.merge(gpu, on=["model", "scenario", "treated"], suffixes=("_cpu", "_gpu"))
    m["same_sign"] = m.mean_cpu * m.mean_gpu > 0
    m["inside_gpu_interval"] = m.mean_cpu.between(m.ci95_lo_gpu, m.ci95_hi_gpu)
    return m[["model", "scenario", "treated", "n_cpu", "mean_cpu", "n_gpu", "mean_gpu", "ci95_lo_gpu", "ci95_hi_gpu",
              "same_sign", "inside_gpu_interval"]].round(2)


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    print("Test macro-F1 (%) of the default two-stage run: GPU (bf16, CUDA) vs CPU (bf16 autocast)\n")
    print(default_runs().to_string(index=False))
    points = seed0_points()
    print("\nTuning points, test macro-F1 minus the default run (points): CPU seed 0 vs GPU seeds 0-2\n")
    print(points.to_string(index=False))
    print(f"\nsame sign: {points.same_sign.sum()} of {len(points)}; "
          f"inside the GPU's interval: {points.inside_gpu_interval.sum()} of {len(points)}")
