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
import data_loader
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


def write_run(folder: Path, values=None, splits=("test", "val"), upto=None, offset=0.0, **identity) -> Path:
    """Write one run's CSV into ``folder``; return its path.

    ``values(stage, epoch, split) -> dict`` overrides the formula's metrics; ``upto=(stage, epoch)``
    stops the run there (a run still training); ``offset`` shifts every metric. ``stage1_id``
    defaults to a hash of the stage-1 settings (so runs of one seed share it); pass one to differ."""
    ident = {**IDENTITY, **identity}
    ident["run_id"] = _hash({k: v for k, v in ident.items() if k not in ("tag", "run_id", "stage1_id")})
    ident["stage1_id"] = identity.get("stage1_id") or _hash(
        {k: ident[k] for k in ("model", "scenario", "seed", "stage1_epochs", "imb_factor")})
    bonus = {"control": 0.0, "baseline": 0.03}.get(ident["exp_name"], 0.01 * len(ident["exp_name"]) % 0.05)
    rows = []
    for stage, n in ((1, ident["stage1_epochs"]), (2, ident["stage2_epochs"])):
        for epoch in range(1, n + 1):
            if upto and (stage, epoch) > upto:
                break
            g = epoch + (ident["stage1_epochs"] if stage == 2 else 0)
            for split in splits:
                base = offset + 0.2 + 0.03 * g + 0.01 * ident["seed"] + (bonus if stage == 2 else 0.0) + (0.005 if split == "val" else 0)
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
    # the JSON a run writes beside its CSV: the analysis reads the training counts and class names from it
    n_max = int(ident["n_max"]) if str(ident["n_max"]) else 4850  # 5000 - 100 validation - 50 statistic
    counts = data_loader.class_counts(ident["scenario"], float(ident["imb_factor"]), n_max, C) \
        if n_max * float(ident["imb_factor"]) >= 1 else None
    (folder / name).with_suffix(".json").write_text(json.dumps({"class_counts": counts,
                                                                "classes": list(data_loader.CIFAR10_CLASSES)}))
    return folder / name


def pinned(stage2_val: dict, stage2_test: dict, default: float = 0.1):
    """``values`` for write_run: stage-2 macro-F1 per epoch on val and test; stage 1 at ``default``."""
    def values(stage, epoch, split):
        table = stage2_val if split == "val" else stage2_test
        return {"macro_f1": table.get(epoch, default) if stage == 2 else default}
    return values


# ----------------------------------------------------------------------------------------------
# summary_tuning

def test_best_epoch_and_best_config_are_chosen_on_validation_not_test(tmp_path):
    res = tmp_path / "results"
    # within a run: validation peaks at stage-2 epoch 2, test at epoch 3
    write_run(res, pinned({1: 0.50, 2: 0.60, 3: 0.55}, {1: 0.30, 2: 0.31, 3: 0.90}), exp_name="baseline")
    # across configurations: A is best on validation, B on test
    tune = dict(tag="tuning-quick", stage2_focal_gamma=1.5, dynamic_mode="loss", min_weight=1.0, max_weight=8.0)
    write_run(res, pinned({1: 0.70, 2: 0.70, 3: 0.70}, {1: 0.20, 2: 0.20, 3: 0.20}),
              exp_name="tune-lr0.003-w1-8-g1.5-loss", stage2_lr=0.003, **tune)  # A
    write_run(res, pinned({1: 0.65, 2: 0.65, 3: 0.65}, {1: 0.95, 2: 0.95, 3: 0.95}),
              exp_name="tune-lr0.03-w1-8-g1.5-loss", stage2_lr=0.03, **tune)  # B
    # the control scores highest on validation but is never a candidate
    write_run(res, pinned({3: 0.99}, {3: 0.99}), exp_name="control", dynamic_mode="none", stage2_loss_type="ce")

    out = st.write_summary(res, tmp_path / "out", verbose=False)
    s = out["summary"].set_index("variant")
    assert s.loc["two_stage", "s2_best_epoch"] == 2
    assert s.loc["two_stage", "s2_best_test_macro_f1"] == pytest.approx(0.31)
    assert s.loc["two_stage", "s2_final_test_macro_f1"] == pytest.approx(0.90)
    assert s.loc["two_stage", "delta_final_test_macro_f1"] == pytest.approx(0.90 - 0.1)
    assert s.loc["lr0.003-w1-8-g1.5-loss", "role"] == "tuning" and s.loc["control", "role"] == "control"

    best = out["best"]
    assert len(best) == 1 and best["n_candidates"].iloc[0] == 3  # baseline + 2 tuning points, pooled over tags
    b = best.iloc[0]
    assert b["variant"] == "lr0.003-w1-8-g1.5-loss" and b["stage2_lr"] == 0.003
    assert b["s2_best_val_macro_f1_mean"] == pytest.approx(0.70)
    assert b["s2_best_test_macro_f1_mean"] == pytest.approx(0.20)  # reported, never used to choose
    on_disk = pd.read_csv(tmp_path / "out" / "best_configs.csv")
    assert on_disk["variant"].tolist() == ["lr0.003-w1-8-g1.5-loss"]


def test_no_validation_split_means_no_choice(tmp_path):
    res = tmp_path / "results"
    write_run(res, splits=("test",), val_per_class=0, n_max=1000)
    out = st.write_summary(res, tmp_path / "out", verbose=False)
    assert out["summary"]["s2_best_selected_on"].tolist() == ["last"]
    assert len(out["best"]) == 0 and any("no validation" in n for n in out["notes"])


def test_mean_and_std_over_seeds(tmp_path):
    res = tmp_path / "results"
    for seed, f1 in ((0, 0.40), (1, 0.50), (2, 0.60)):
        write_run(res, pinned({}, {3: f1}), seed=seed)
    write_run(res, pinned({}, {3: 0.90}), seed=3, upto=(2, 1))  # still running: not in the mean
    write_run(res, pinned({}, {3: 0.33}), seed=0, model="resnet20")  # a single seed
    out = st.write_summary(res, tmp_path / "out", verbose=False)
    assert out["summary"]["complete"].tolist().count(False) == 1
    agg = out["agg"].set_index("model")
    r = agg.loc["resnet10"]
    assert r["n_seeds"] == 3 and r["seeds"] == "0 1 2"
    assert r["s2_final_test_macro_f1_mean"] == pytest.approx(0.50)
    assert r["s2_final_test_macro_f1_std"] == pytest.approx(0.10)  # sample std, ddof=1
    assert r["s1_final_test_macro_f1_std"] == pytest.approx(0.0)
    one = agg.loc["resnet20"]
    assert one["n_seeds"] == 1 and one["s2_final_test_macro_f1_mean"] == pytest.approx(0.33)
    assert np.isnan(one["s2_final_test_macro_f1_std"])
    assert len(pd.read_csv(tmp_path / "out" / "summary_tuning_agg.csv")) == 2


def test_compare_table(tmp_path):
    res = tmp_path / "results"
    pins = {"ce": (0.40, 0.44), "ldam_drw": (0.50, 0.52), "two_stage_ictta": (0.47, 0.47)}

    def metrics(stage, epoch, split, f1, method):
        if method == "two_stage_ictta" and (stage, epoch) == (2, 1):  # its best-by-validation epoch: test 60%
            f1 = {"val": 0.90, "test": 0.60}[split]
        return {"macro_f1": f1, "acc": f1 + 0.1, "few_acc": f1 / 2}

    for method, values in pins.items():
        for seed, f1 in enumerate(values):
            write_run(res, lambda s, e, split, f1=f1, method=method: metrics(s, e, split, f1, method),
                      exp_name=method, method=method, seed=seed, tag="compare-reduced", model="resnet32", n_max="")
    write_run(res, tag="baseline-quick")  # another suite: not in the table
    out = st.write_summary(res, tmp_path / "out", verbose=False)
    table = out["compare"]
    final = table[table["selection"] == "final"].set_index("method")
    assert list(final.index) == ["ldam_drw", "two_stage_ictta", "ce"]  # by test macro-F1 (51, 47, 42), best first
    best = table[table["selection"] == "best"].set_index("method")
    assert best.loc["two_stage_ictta", "test_macro_f1_pct_mean"] == pytest.approx(60.0)  # first by its own numbers,
    assert list(best.index) == list(final.index)  # yet listed as in the final table, so the two read alike
    assert set(table["selection"]) == {"final", "best", "peak"} and set(table["tag"]) == {"compare-reduced"}
    # the references' protocol: the epoch of the highest test accuracy (two_stage_ictta's 70 % at (2, 1))
    peak = table[table["selection"] == "peak"].set_index("method")
    assert peak.loc["two_stage_ictta", "test_acc_pct_mean"] == pytest.approx(70.0)
    assert peak.loc["ce", "test_acc_pct_mean"] == pytest.approx(52.0)
    ce = final.loc["ce"]
    assert ce["test_macro_f1_pct_mean"] == pytest.approx(42.0)
    assert ce["test_macro_f1_pct_std"] == pytest.approx(np.std([40, 44], ddof=1))
    assert ce["test_acc_pct_mean"] == pytest.approx(52.0) and ce["test_few_acc_pct_mean"] == pytest.approx(21.0)
    # two seeds: t_{0.975,1} = 12.7062, half-width 12.7062 * 2.828 / sqrt(2) = 25.41
    assert ce["test_macro_f1_pct"] == "42.00 ± 2.83 [16.59, 67.41]"
    assert (ce["test_macro_f1_pct_ci95_lo"], ce["test_macro_f1_pct_ci95_hi"]) == pytest.approx((16.588, 67.412), abs=1e-3)
    assert final.loc["two_stage_ictta", "test_macro_f1_pct"] == "47.00 ± 0.00 [47.00, 47.00]"
    assert ce["n_seeds"] == 2 and ce["n_max"] == 4850  # as the runs' JSONs record it
    md = (tmp_path / "out" / "compare_table.md").read_text()
    assert "| ldam_drw | 2 | **61.00 ± 1.41 [48.29, 73.71]** | **51.00 ± 1.41 [38.29, 63.71]** |" in md
    assert "n_max 4850" in md and "stage-2 last epoch" in md and "best-by-validation" in md
    assert len(pd.read_csv(tmp_path / "out" / "compare_table.csv")) == 9  # 3 methods x 3 selections
    assert "best test accuracy over the evaluated epochs" in md and "test evaluated at 6 epochs" in md  # 3 + 3, every one


def test_t_quantiles_match_the_tables():
    known = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 30: 2.042, 31: 2.040, 40: 2.021, 60: 2.000, 120: 1.980}
    for df, t in known.items():
        assert st.t975(df) == pytest.approx(t, abs=5e-4), df
    assert st.t975(10**6) == pytest.approx(1.960, abs=5e-4)  # the normal's quantile in the limit
    with pytest.raises(ValueError):
        st.t975(0)


def test_interval_on_known_numbers():
    s = st.interval95([1, 2, 3, 4, 5])  # mean 3, std 1.5811, t_{0.975,4} = 2.7764
    assert (s["n"], s["mean"], s["std"]) == (5, 3.0, pytest.approx(1.58114, abs=1e-5))
    assert (s["ci95_lo"], s["ci95_hi"]) == pytest.approx((1.03676, 4.96324), abs=1e-4)
    assert st.fmt_stat(s) == "3.00 ± 1.58 [1.04, 4.96]"
    assert st.interval95([1.0, float("nan"), 3.0])["n"] == 2  # a missing value is not a zero


def test_a_metric_some_seeds_lack_counts_its_own_seeds(tmp_path):
    res = tmp_path / "results"
    for seed, tail in ((0, 0.2), (1, 0.4), (2, float("nan"))):  # seed 2 has no tail macro-F1
        write_run(res, lambda stage, epoch, split, tail=tail: {"tail_macro_f1": tail}, seed=seed)
    row = st.aggregate_seeds(st.summarize_runs(st.load_rows(res))).iloc[0]
    tail = st.level(row, "s2_final_test_tail_macro_f1")
    assert row["n_seeds"] == 3 and row["s2_final_test_tail_macro_f1_n"] == 2
    assert tail["n"] == 2 and tail["mean"] == pytest.approx(30.0)
    assert tail["ci95_hi"] - tail["mean"] == pytest.approx(12.706 * 10, rel=1e-4)  # t_{0.975,1} * sd / sqrt(2), sd = 10 sqrt(2)
    assert st.metric_n(row, "s2_final_test_macro_f1") == 3 and "s2_final_test_macro_f1_n" not in row.index
    assert st.metric_n(row, "no_such_metric") == 0


def test_a_truncated_or_edited_run_file_is_skipped_with_its_line(tmp_path):
    res = tmp_path / "results"
    good = write_run(res, seed=0)
    cut = write_run(res, seed=1)
    lines = cut.read_text().splitlines()
    cut.write_text("\n".join(lines[:-1] + [",".join(lines[-1].split(",")[:-3])]) + "\n")  # cut short in the w_ columns
    edited = write_run(res, seed=2)
    df = pd.read_csv(edited)
    df["macro_f1"] = df["macro_f1"].astype(object)
    df.loc[3, "macro_f1"] = "abc"
    df.to_csv(edited, index=False)
    notes: list = []
    rows = st.load_rows(res, notes)
    assert set(rows["source"]) == {good.name}
    assert any(f"skipped {cut}: line(s) {len(lines)} " in n for n in notes)
    assert any(f"skipped {edited}: line(s) 5 " in n for n in notes)  # row 3 is line 5 (after the header)


def test_one_seed_has_no_interval(tmp_path):
    res = tmp_path / "results"
    write_run(res, pinned({}, {3: 0.50}))
    write_run(res, pinned({}, {3: 0.45}), exp_name="control", dynamic_mode="none", stage2_loss_type="ce")
    write_run(res, exp_name="ce", method="ce", tag="compare-reduced")
    out = st.write_summary(res, tmp_path / "out", verbose=False)
    s = st.interval95([0.5])
    assert s["n"] == 1 and np.isnan(s["std"]) and np.isnan(s["ci95_lo"]) and np.isnan(s["ci95_hi"])
    assert st.fmt_stat(s) == "0.50 (n=1, no interval)"
    p = out["paired"].set_index(["comparison", "split", "metric"]).loc[("vs_control", "test", "macro_f1")]
    assert p["n"] == 1 and p["mean"] == pytest.approx(5.0) and np.isnan(p["ci95_lo"])
    assert p["interval"] == "+5.00 (n=1, no interval), wins 1/1"
    assert np.isnan(out["agg"]["s2_final_test_macro_f1_ci95"]).all()
    for name in ("compare_table.md", "paired_differences.md"):
        text = (tmp_path / "out" / name).read_text()
        assert "n=1, no interval" in text, name
        assert not any("±" in line for line in text.splitlines() if line.startswith("|")), name  # no ± from one run


def test_paired_differences_on_known_numbers(tmp_path):
    res = tmp_path / "results"
    for seed, (ours, control) in enumerate(((0.50, 0.45), (0.55, 0.52), (0.62, 0.50))):
        write_run(res, pinned({}, {3: ours}), seed=seed)
        write_run(res, pinned({}, {3: control}), seed=seed, exp_name="control", dynamic_mode="none",
                  stage2_loss_type="ce")
    out = st.write_summary(res, tmp_path / "out", verbose=False)
    p = out["paired"].set_index(["comparison", "split", "metric"])
    d = p.loc[("vs_control", "test", "macro_f1")]  # differences 5, 3, 12 pp
    assert (d["n"], d["wins"], d["seeds"]) == (3, 3, "0 1 2")
    assert (d["mean"], d["std"]) == pytest.approx((6.6667, 4.7258), abs=1e-4)
    assert (d["ci95_lo"], d["ci95_hi"]) == pytest.approx((-5.0729, 18.4062), abs=1e-3)  # t_{0.975,2} = 4.3027
    assert d["interval"] == "+6.67 ± 4.73 [-5.07, +18.41], wins 3/3" and d["unpaired"] == ""
    g = p.loc[("stage2_vs_stage1", "test", "macro_f1")]  # stage 1 ends at 0.10: 40, 45, 52 pp
    assert (g["mean"], g["ci95_lo"], g["ci95_hi"]) == pytest.approx((45.6667, 30.6930, 60.6403), abs=1e-3)
    assert ("vs_control", "val", "macro_f1") in p.index  # validation rows too
    on_disk = pd.read_csv(tmp_path / "out" / "paired_differences.csv")
    assert len(on_disk) == len(out["paired"]) and "wins 3/3" in (tmp_path / "out" / "paired_differences.md").read_text()


def test_pairs_need_the_same_seed_and_the_same_stage1(tmp_path):
    res = tmp_path / "results"
    ctl = dict(exp_name="control", dynamic_mode="none", stage2_loss_type="ce")
    for seed in (0, 1, 2):
        write_run(res, pinned({}, {3: 0.50}), seed=seed)
    write_run(res, pinned({}, {3: 0.40}), seed=0, **ctl)
    write_run(res, pinned({}, {3: 0.48}), seed=1, **ctl)
    write_run(res, pinned({}, {3: 0.00}), seed=2, stage1_id="another000st", **ctl)  # its own stage 1: no pair
    write_run(res, pinned({}, {3: 0.00}), seed=3, **ctl)  # no two-stage run of seed 3
    summary = st.summarize_runs(st.load_rows(res))
    pairs, unpaired = st.pair_runs(summary[summary["role"] == "two_stage"], summary[summary["role"] == "control"])
    assert sorted(int(t["seed"]) for t, _ in pairs) == [0, 1]
    assert all(t["stage1_id"] == c["stage1_id"] and t["seed"] == c["seed"] for t, c in pairs)
    assert len(unpaired) == 3  # both runs of seed 2, and the control of seed 3
    assert "two_stage seed 2" in unpaired[0] and "another stage 1" in unpaired[0]
    assert unpaired[1:] == ["control seed 2: no two_stage partner", "control seed 3: no two_stage partner"]
    d = st.paired_table(summary).set_index(["comparison", "split", "metric"]).loc[("vs_control", "test", "macro_f1")]
    assert d["n"] == 2 and d["mean"] == pytest.approx((10 + 2) / 2)  # seed 2's 50-point gap is not in it
    assert "another stage 1" in d["unpaired"] and "seed 3" in d["unpaired"]


def test_runs_that_trained_one_stage1_setting_apart_are_not_paired_as_sharing_it(tmp_path):
    """Same seed and stage1_id, but stage-1 results that differ (trained twice, on two machines):
    a paired difference over a shared stage 1 would be a claim the runs cannot back."""
    res = tmp_path / "results"
    ctl = dict(exp_name="control", dynamic_mode="none", stage2_loss_type="ce")

    def stage1_loss(loss):
        def values(stage, epoch, split):
            return {"macro_f1": 0.5 if stage == 2 else 0.1, **({"loss": loss} if stage == 1 else {})}
        return values

    write_run(res, stage1_loss(1.25), seed=0)
    write_run(res, stage1_loss(1.25), seed=0, **ctl)  # read the same checkpoint: identical stage 1
    write_run(res, stage1_loss(1.25), seed=1)
    write_run(res, stage1_loss(1.31), seed=1, **ctl)  # the same settings, trained apart
    summary = st.summarize_runs(st.load_rows(res))
    pairs, unpaired = st.pair_runs(summary[summary["role"] == "two_stage"], summary[summary["role"] == "control"])
    assert [int(t["seed"]) for t, _ in pairs] == [0]
    assert unpaired == ["two_stage seed 1: the control run of this seed has the same stage-1 settings but trained "
                        "its stage 1 apart (stage-1 test loss 1.3100 vs 1.2500)"]


def test_a_run_trained_apart_from_its_only_partner_is_named_once(tmp_path):
    """No pair at all: the treated run's line says why, and the reference run is not listed a
    second time as having no partner."""
    res = tmp_path / "results"
    ctl = dict(exp_name="control", dynamic_mode="none", stage2_loss_type="ce")

    def values(loss):
        return lambda stage, epoch, split: {"macro_f1": 0.5, **({"loss": loss} if stage == 1 else {})}

    write_run(res, values(1.25), seed=0)
    write_run(res, values(1.31), seed=0, **ctl)
    paired = st.paired_table(st.summarize_runs(st.load_rows(res)))
    row = paired[(paired["comparison"] == "vs_control") & (paired["split"] == "test")
                 & (paired["metric"] == "macro_f1")]
    assert row["n"].tolist() == [0]
    assert row["unpaired"].tolist() == ["two_stage seed 0: the control run of this seed has the same stage-1 "
                                        "settings but trained its stage 1 apart (stage-1 test loss 1.3100 vs 1.2500)"]


def test_two_configurations_of_one_cell_are_never_merged(tmp_path):
    """The CPU grid (seeds 0-2) and a GPU run of seed 0 in one results folder: each configuration
    pairs with its own control, in its own row, and seed 0 is not counted twice."""
    res = tmp_path / "results"
    ctl = dict(exp_name="control", dynamic_mode="none", stage2_loss_type="ce")
    for seed, gain in enumerate((0.05, 0.03, 0.12)):
        write_run(res / "cpu", pinned({}, {3: 0.40 + gain}), seed=seed)
        write_run(res / "cpu", pinned({}, {3: 0.40}), seed=seed, **ctl)
    gpu = dict(device="cuda", stage1_id="gpuseed0xxxx")
    write_run(res / "gpu", pinned({}, {3: 0.30}), seed=0, **gpu)
    write_run(res / "gpu", pinned({}, {3: 0.50}), seed=0, **gpu, **ctl)
    paired = st.paired_table(st.summarize_runs(st.load_rows(res)))
    rows = paired[(paired["comparison"] == "vs_control") & (paired["split"] == "test")
                  & (paired["metric"] == "macro_f1")].sort_values("n")
    assert rows["n"].tolist() == [1, 3] and rows["seeds"].tolist() == ["0", "0 1 2"]
    assert rows["mean"].tolist() == pytest.approx([-20.0, 20 / 3])
    assert rows["differs"].tolist() == ["exp_name stage2_loss_type dynamic_mode"] * 2
    assert rows["unpaired"].tolist() == ["", ""]
    gains = paired[(paired["comparison"] == "stage2_vs_stage1") & (paired["split"] == "test")
                   & (paired["metric"] == "macro_f1")]
    assert sorted(gains["n"]) == [1, 3]
    md = st.paired_markdown(paired)
    assert md.count("| quick | resnet10 | long_tail | 0.01 | two_stage | control |") == 2
    report = st.format_report(st.build_tables(res), [])
    assert report.count("(configs ") == 8  # vs control and stage 2 vs stage 1, 2 metrics, 2 configurations


def test_a_reference_configuration_without_partners_is_listed(tmp_path):
    """A GPU control whose two-stage run is missing pairs with nothing: it is named in the
    unpaired column, not dropped; a setting one side did not record is not a difference."""
    res = tmp_path / "results"
    ctl = dict(exp_name="control", dynamic_mode="none", stage2_loss_type="ce")
    for seed in (0, 1):
        write_run(res / "cpu", pinned({}, {3: 0.50}), seed=seed, prior_blend=0.0)
        write_run(res / "cpu", pinned({}, {3: 0.45}), seed=seed, **ctl)
    write_run(res / "gpu", pinned({}, {3: 0.40}), seed=0, device="cuda", stage1_id="gpuseed0xxxx", **ctl)
    paired = st.paired_table(st.summarize_runs(st.load_rows(res)))
    r = paired.set_index(["comparison", "split", "metric"]).loc[("vs_control", "test", "macro_f1")]
    assert (r["n"], r["seeds"]) == (2, "0 1")
    assert r["unpaired"] == "control seed 0: no two_stage partner"
    assert r["differs"] == "exp_name stage2_loss_type dynamic_mode"  # not prior_blend, unset in the controls


def test_ablation_against_two_drw_configurations_uses_the_one_with_most_pairs(tmp_path):
    res = tmp_path / "results"
    compare, ablation = dict(tag="compare-reduced"), dict(tag="ablation-reduced")
    for seed in (0, 1, 2):
        write_run(res, pinned({3: 0.60}, {3: 0.60}), seed=seed, exp_name="drw", method="drw", **compare)
        write_run(res, pinned({3: 0.50}, {3: 0.50}), seed=seed, exp_name="two_stage_ictta", **compare)
        write_run(res, pinned({3: 0.62}, {3: 0.61}), seed=seed, exp_name="abl-good", **ablation)
    write_run(res / "other", pinned({3: 0.90}, {3: 0.90}), seed=0, exp_name="drw", method="drw", eval_every=2,
              **compare)  # another drw configuration, one seed, sharing seed 0's stage 1
    out = st.write_summary(res, tmp_path / "out", verbose=False)
    good = out["ablation"].set_index("variant").loc["abl-good"]
    assert good["vs_drw_test_macro_f1_n"] == 3 and good["vs_drw_test_macro_f1_mean"] == pytest.approx(1.0)
    assert good["closes_gap"] == "closes the gap"
    drw_rows = out["paired"][(out["paired"]["comparison"] == "ablation_vs_drw") & (out["paired"]["split"] == "test")
                             & (out["paired"]["metric"] == "macro_f1")]
    assert sorted(drw_rows["n"]) == [1, 3]  # both stay in the paired table
    plots.make_plots(res, tmp_path / "figures", verbose=False)  # the ablation figure draws one of them
    assert (tmp_path / "figures" / "ablation" / "reduced_resnet10_long_tail_imb0.01.png").stat().st_size > 0
    # the default run's class weights beside the chosen variant's
    assert (tmp_path / "figures" / "ablation" / "reduced_resnet10_long_tail_imb0.01_weights.png").stat().st_size > 0


def test_the_weights_figure_of_a_confirmation_run_draws_its_only_variant(tmp_path):
    """One seed of one variant (a choice made at another budget, confirmed here): drawn beside the
    default. Two one-seed variants: nothing to choose from on validation, so no figure, and a note."""
    res = tmp_path / "results"
    ablation = dict(tag="ablation-literature")
    write_run(res, pinned({3: 0.50}, {3: 0.50}), seed=0, exp_name="two_stage_ictta", **ablation)
    write_run(res, pinned({3: 0.60}, {3: 0.60}), seed=0, exp_name="abl-one", **ablation)
    figure = tmp_path / "figures" / "ablation" / "literature_resnet10_long_tail_imb0.01_weights.png"
    plots.make_plots(res, tmp_path / "figures", verbose=False)
    assert figure.stat().st_size > 0
    write_run(res, pinned({3: 0.70}, {3: 0.70}), seed=0, exp_name="abl-two", **ablation)
    out = plots.make_plots(res, tmp_path / "again", verbose=False)
    assert not (tmp_path / "again" / "ablation" / figure.name).exists()
    assert any(n.startswith(f"{figure.name}: needs the default") for n in out["notes"])


def test_ids_that_look_like_numbers_stay_text(tmp_path):
    """A hex id such as 2175e3579465 would read as a float (inf), and every such id as the same."""
    res = tmp_path / "results"
    for seed, stage1 in enumerate(("2175e3579465", "0012345678", "3e99999")):
        write_run(res, pinned({}, {3: 0.50}), seed=seed, stage1_id=stage1)
        write_run(res, pinned({}, {3: 0.45}), seed=seed, stage1_id=stage1, exp_name="control",
                  dynamic_mode="none", stage2_loss_type="ce")
    summary = st.summarize_runs(st.load_rows(res))
    assert sorted(summary["stage1_id"].unique()) == ["0012345678", "2175e3579465", "3e99999"]
    d = st.paired_table(summary).set_index(["comparison", "split", "metric"]).loc[("vs_control", "test", "macro_f1")]
    assert d["n"] == 3 and d["unpaired"] == ""


def test_compare_suite_pairs_two_stage_with_the_methods_of_its_stage1(tmp_path):
    """In the compare suite, two_stage_ictta shares each seed's stage 1 with ce and drw (not with
    ldam_drw, which trains its own): those are paired differences, by seed."""
    res = tmp_path / "results"
    compare = dict(tag="compare-literature", model="resnet32", n_max="")
    final = {"two_stage_ictta": (0.50, 0.52), "drw": (0.53, 0.54), "ce": (0.45, 0.49), "ldam_drw": (0.60, 0.61)}
    for method, values in final.items():
        for seed, f1 in enumerate(values):
            own = {"stage1_id": f"ldamseed{seed}xx"} if method == "ldam_drw" else {}
            write_run(res, pinned({}, {3: f1}), exp_name=method, method=method, seed=seed, **compare, **own)
    paired = st.paired_table(st.summarize_runs(st.load_rows(res)))
    rows = paired[(paired["comparison"] == "two_stage_vs_method") & (paired["split"] == "test")
                  & (paired["metric"] == "macro_f1")].set_index("reference")
    assert sorted(rows.index) == ["ce", "drw"]
    assert rows.loc["drw", "mean"] == pytest.approx(-2.5) and rows.loc["drw", "wins"] == 0
    assert rows.loc["ce", "mean"] == pytest.approx(4.0) and rows.loc["ce", "wins"] == 2
    by_seed = paired[(paired["comparison"] == "two_stage_vs_method_seed") & (paired["split"] == "test")
                     & (paired["metric"] == "macro_f1")].set_index("reference")
    assert list(by_seed.index) == ["ldam_drw"]  # its own stage 1: paired by seed only
    assert by_seed.loc["ldam_drw", "mean"] == pytest.approx(-9.5) and by_seed.loc["ldam_drw", "n"] == 2
    gain = paired[(paired["comparison"] == "stage2_vs_stage1") & (paired["split"] == "test")
                  & (paired["metric"] == "macro_f1")]
    assert gain["mean"].tolist() == pytest.approx([100 * (0.51 - 0.10)])  # stage 1 pinned at 0.10


def test_a_named_two_stage_variant_pairs_with_the_methods_of_its_own_stage1(tmp_path):
    """two_stage_sam trains from drw_sam's stage 1 (SAM in both): paired with drw_sam alone, never
    with drw or ce by seed; the plain two_stage_ictta keeps its pairs with drw (stage 1) and
    drw_sam (by seed)."""
    res = tmp_path / "results"
    runs = {("two_stage_ictta", "two_stage_ictta", "ce"): (0.50, 0.52), ("drw", "drw", "ce"): (0.53, 0.54),
            ("drw_sam", "drw", "sam"): (0.60, 0.58), ("two_stage_sam", "two_stage_ictta", "sam"): (0.57, 0.59)}
    for (exp, method, stage1), values in runs.items():
        for seed, f1 in enumerate(values):
            write_run(res, pinned({}, {3: f1}), exp_name=exp, method=method, seed=seed,
                      stage1_id=f"{stage1}seed{seed}", tag="compare-literature", model="resnet32", n_max="")
    paired = st.paired_table(st.summarize_runs(st.load_rows(res)))
    test_f1 = paired[(paired["split"] == "test") & (paired["metric"] == "macro_f1")]
    pairs = {(r.comparison, r.treated, r.reference): r for r in test_f1.itertuples()}
    sam = pairs.pop(("two_stage_vs_method", "two_stage_sam", "drw_sam"))
    assert sam.mean == pytest.approx(-1.0) and sam.n == 2 and sam.wins == 1
    assert pairs.pop(("two_stage_vs_method", "two_stage_ictta", "drw")).mean == pytest.approx(-2.5)
    assert pairs.pop(("two_stage_vs_method_seed", "two_stage_ictta", "drw_sam")).mean == pytest.approx(-8.0)
    assert pairs.pop(("variant_vs_method", "two_stage_sam", "two_stage_ictta")).mean == pytest.approx(7.0)
    assert pairs.pop(("variant_vs_method", "drw_sam", "drw")).mean == pytest.approx(5.5)
    gains = {t for c, t, _ in pairs if c == "stage2_vs_stage1"}
    assert gains == {"two_stage_ictta", "two_stage_sam"}
    assert {c for c, _, _ in pairs} == {"stage2_vs_stage1"}  # nothing else: no seed-only pair of the variant


def test_a_named_variant_is_paired_with_its_method_by_seed(tmp_path):
    """ce_jpeg50 trains its own stage 1 (other images), so it pairs with ce by seed alone; a
    variant without a plain run of its seed is listed as unpaired."""
    res = tmp_path / "results"
    runs = {("ce", "ce"): (0.50, 0.52), ("ce_jpeg50", "ce"): (0.47, 0.50, 0.40), ("ldam_drw", "ldam_drw"): (0.6,),
            ("two_stage_ictta", "two_stage_ictta"): (0.55, 0.56)}
    for (exp, method), values in runs.items():
        for seed, f1 in enumerate(values):
            stage1 = f"{'ce' if method == 'two_stage_ictta' else exp}seed{seed}"  # two_stage_ictta shares ce's
            write_run(res, pinned({}, {3: f1}), exp_name=exp, method=method, seed=seed, stage1_id=stage1,
                      tag="compare-literature", model="resnet32", n_max="")
    paired = st.paired_table(st.summarize_runs(st.load_rows(res)))
    ours = paired[(paired["comparison"] == "two_stage_vs_method") & (paired["split"] == "test")
                  & (paired["metric"] == "macro_f1")]
    assert ours["reference"].tolist() == ["ce"] and ours["n"].tolist() == [2]
    assert ours["unpaired"].tolist() == [""]  # the variant is not one of ce's runs
    rows = paired[(paired["comparison"] == "variant_vs_method") & (paired["split"] == "test")
                  & (paired["metric"] == "macro_f1")]
    assert len(rows) == 1
    r = rows.iloc[0]
    assert (r["treated"], r["reference"], r["n"], r["seeds"]) == ("ce_jpeg50", "ce", 2, "0 1")
    assert r["mean"] == pytest.approx(-2.5) and r["wins"] == 0
    assert r["unpaired"] == "ce_jpeg50 seed 2: no ce run of this seed"


def test_ablation_table_chooses_on_validation_and_checks_on_test(tmp_path):
    res = tmp_path / "results"
    compare, ablation = dict(tag="compare-reduced"), dict(tag="ablation-reduced")
    runs = {("drw", "drw"): (0.60, 0.60), ("two_stage_ictta", "two_stage_ictta"): (0.50, 0.50),
            ("abl-good", "two_stage_ictta"): (0.62, 0.61), ("abl-val-only", "two_stage_ictta"): (0.61, 0.55),
            ("abl-test-only", "two_stage_ictta"): (0.55, 0.70)}  # (val, test) macro-F1 at the last epoch
    for (exp, method), (val, test) in runs.items():
        for seed, shift in enumerate((0.0, 0.01, -0.01)):
            write_run(res, pinned({3: val + shift}, {3: test + shift}), seed=seed, exp_name=exp, method=method,
                      **(compare if not exp.startswith("abl-") else ablation))
    for seed, shift in enumerate((0.0, 0.01, -0.01)):  # logit_adjust trains its own stage 1
        write_run(res, pinned({3: 0.58 + shift}, {3: 0.59 + shift}), seed=seed, exp_name="logit_adjust",
                  method="logit_adjust", stage1_id=f"laseed{seed}xxxx", **compare)
    out = st.write_summary(res, tmp_path / "out", verbose=False)
    table = out["ablation"].set_index("variant")
    assert table.loc["logit_adjust", "kind"] == "logit_adjust"
    assert table.loc["abl-good", "vs_logit_adjust_test_macro_f1_n"] == 3  # by seed, on another stage 1
    assert table.loc["abl-good", "vs_logit_adjust_test_macro_f1_mean"] == pytest.approx(2.0)
    assert table.loc["two_stage_ictta", "kind"] == "default" and table.loc["drw", "kind"] == "drw"
    assert table.loc["abl-good", "closes_gap"] == "closes the gap"
    assert table.loc["abl-val-only", "closes_gap"] == "on validation only"
    assert table.loc["abl-test-only", "closes_gap"] == "no"  # test never rescues a validation loss
    # chosen on validation (abl-good's 62 %), though abl-test-only has the best test numbers
    assert st.chosen_variant(out["ablation"])["variant"] == "abl-good"
    assert "Chosen on validation (highest mean val macro-F1, at least two seeds): **abl-good**" in \
        (tmp_path / "out" / "ablation_table.md").read_text()
    good = table.loc["abl-good"]
    assert good["vs_default_test_macro_f1_mean"] == pytest.approx(11.0)
    assert good["vs_drw_val_macro_f1_mean"] == pytest.approx(2.0) and good["vs_drw_val_macro_f1_wins"] == 3
    assert good["vs_drw_test_macro_f1_n"] == 3 and good["test_macro_f1_pct_mean"] == pytest.approx(61.0)
    assert good["test_macro_f1_pct"] == "61.00 ± 1.00 [58.52, 63.48]"  # t_{0.975,2} = 4.3027
    assert out["best"].empty or not out["best"]["variant"].str.startswith("abl-").any()
    md = (tmp_path / "out" / "ablation_table.md").read_text()
    verdicts = {line.split(" | ")[0][2:]: line.split(" | ")[-1] for line in md.splitlines() if line.startswith("| abl-") and " | drw | " in line}
    assert verdicts == {"abl-good": "closes the gap |", "abl-val-only": "on validation only |", "abl-test-only": "no |"}
    assert len(pd.read_csv(tmp_path / "out" / "ablation_table.csv")) == 6  # 3 variants, 3 references


def test_gap_verdict_needs_more_than_one_seed():
    one, three = st.interval95([2.0]), st.interval95([2.0, 1.0, 3.0])
    assert st.gap_verdict(one, one) == "one seed: no verdict"
    assert st.gap_verdict(three, three) == "closes the gap"
    assert st.gap_verdict(three, st.interval95([-1.0, -2.0, -3.0])) == "on validation only"
    assert st.gap_verdict(None, None) == "no drw pairs"


def test_best_config_says_when_candidates_have_different_seed_counts(tmp_path):
    """The tuning grid runs seed 0 only and the baseline three seeds: the choice says so."""
    res = tmp_path / "results"
    for seed in (0, 1, 2):
        write_run(res, pinned({3: 0.50}, {3: 0.50}), seed=seed)
    write_run(res, pinned({3: 0.55}, {3: 0.40}), seed=0, exp_name="tune-lr0.03", stage2_lr=0.03, tag="tuning-quick")
    notes: list = []
    agg = st.aggregate_seeds(st.summarize_runs(st.load_rows(res)))
    best = st.best_configs(agg, notes=notes)
    assert best["n_candidates"].tolist() == [2] and best["n_seeds"].tolist() == [1]  # chosen on validation
    assert any("1 to 3 seeds" in n for n in notes)


def test_labels():
    assert st.split_tag("tuning-quick") == ("tuning", "quick") and st.split_tag("mine") == ("", "mine")
    ident = {**IDENTITY, "exp_name": "tune-x", "stage2_lr": 0.03, "max_weight": 16.0, "dynamic_mode": "val_loss"}
    assert st.variant_and_role(ident) == ("lr0.03-w1-16-g1.5-val_loss", "tuning")
    assert st.variant_and_role({**IDENTITY, "exp_name": "x", "dynamic_mode": "none", "stage2_loss_type": "ce"})[1] == "control"
    assert st.variant_and_role({**IDENTITY, "exp_name": "drw", "method": "drw", "tag": "compare-full"}) == ("drw", "method")
    for exp, named in ((None, ("ldam_drw", "method")), ("", ("ldam_drw", "method")), ("ldam_drw", ("ldam_drw", "method")),
                       ("ldam_drw_uniform_init", ("ldam_drw_uniform_init", "variant"))):
        assert st.variant_and_role({**IDENTITY, "exp_name": exp, "method": "ldam_drw", "tag": "compare-literature"}) \
            == named


def test_cli_without_results(tmp_path, capsys):
    assert st.main(["--results", str(tmp_path), "--quiet"]) == 1
    assert plots.main(["--results", str(tmp_path / "nowhere"), "--quiet"]) == 1
    assert "results_*.csv" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert st.main(["--results", str(a_file), "--quiet"]) == 1
    assert capsys.readouterr().err == f"error: results folder {str(a_file)!r} is a file\n"
    write_run(tmp_path / "res")
    for cli_main in (st.main, plots.main):
        assert cli_main(["--results", str(tmp_path / "res"), "--out", str(a_file), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {a_file}: {a_file} is a file, not a folder") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# plots

def test_plots_on_partial_results(tmp_path):
    """One model, one scenario, one seed, a run still going, a single compare method: every figure
    that can be drawn is, and the notes say what is missing."""
    res = tmp_path / "results"
    write_run(res / "quick", model="resnet10", scenario="head_tail")
    write_run(res / "quick", model="resnet10", scenario="head_tail", exp_name="control", dynamic_mode="none",
              stage2_loss_type="ce")
    write_run(res / "quick", model="resnet20", scenario="long_tail", upto=(1, 2))
    write_run(res / "reduced", exp_name="ce", method="ce", tag="compare-reduced")
    fig_dir = tmp_path / "figures"
    result = plots.make_plots(res, fig_dir, verbose=False)
    expected = ["forest_paired_macro_f1.png", "bar_models_vs_scenario_macro_f1.png", "line_depth_trend_macro_f1.png",
                "heatmap_macro_f1.png",
                "curves_best/resnet10_head_tail_acc_curves_best.png",
                "class_weights/resnet10_head_tail_stage2_weights.png",
                "per_class_f1/resnet10_head_tail_f1_vs_count.png", "compare/compare-reduced_resnet10_long_tail_imb0.01.png",
                "best_summary.csv", "best_hparams.csv", "class_counts_imb01.csv"]
    for name in expected:
        assert (fig_dir / name).stat().st_size > 0, name
    pngs = sorted(p.relative_to(fig_dir).as_posix() for p in fig_dir.rglob("*.png"))
    assert pngs == sorted(n for n in expected if n.endswith(".png"))

    notes = " ".join(result["notes"])
    # what the figures lack is what other runs in the results have (resnet20, long_tail), not a registry's list
    assert "no finished runs for model(s) resnet20" in notes and "no finished runs for scenario(s) long_tail" in notes
    assert "simplecnn" not in notes and "one seed" in notes and "still running" in notes
    assert "fewer than 3 seeds" in notes
    best = result["best_summary"].iloc[0]
    assert best["chosen_variant"] == "two_stage"
    assert best["default_minus_control_pp_mean"] == pytest.approx(3.0) and best["default_minus_control_pp_n"] == 1
    counts = pd.read_csv(fig_dir / "class_counts_imb01.csv")  # as the runs' JSONs recorded them, unfinished ones too
    assert counts.columns.tolist() == ["class", "name", "head_tail", "long_tail", "n_max"]
    assert counts["long_tail"].iloc[[0, -1]].tolist() == [1500, 15] and counts["head_tail"].tolist() == [1500] * 5 + [15] * 5
    assert counts["name"].iloc[0] == "airplane"

    # the same folder for the compare run alone: the grid's figures go, a file plots.py never wrote stays
    (fig_dir / "my_notes.txt").write_text("mine")
    again = plots.make_plots(res / "reduced", fig_dir, verbose=False)
    left = sorted(p.relative_to(fig_dir).as_posix() for p in fig_dir.rglob("*") if p.is_file())
    assert left == sorted([".plots_written", "my_notes.txt", "compare/compare-reduced_resnet10_long_tail_imb0.01.png"])
    assert any(n.startswith("removed 10 file(s) an earlier call wrote here") for n in again["notes"])
    assert sorted(p.name for p in fig_dir.iterdir() if p.is_dir()) == ["compare"]  # emptied folders went too
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (fig_dir / ".plots_written").write_text(f"../outside.txt\n{outside}\n")  # an edited list
    plots.make_plots(res / "reduced", fig_dir, verbose=False)
    assert outside.read_text() == "keep"


def test_a_compare_folder_of_named_variants_only_gets_its_table_figure_and_a_note(tmp_path):
    """Named variants (drw_sam, two_stage_sam) are no registry method, so there is no best method to
    draw the confusion matrices of: said, not a crash."""
    res = tmp_path / "results"
    write_run(res, exp_name="drw_sam", method="drw", sam_rho=0.5, tag="compare-literature")
    write_run(res, exp_name="two_stage_sam", sam_rho=0.5, tag="compare-literature")
    agg = st.aggregate_seeds(st.summarize_runs(st.load_rows(res)))
    assert set(agg["role"]) == {"variant"}
    best = st.best_configs(agg, by=("tag", "model"), candidates=st.METHOD_CANDIDATES)
    assert best.empty and best.columns.tolist() == ["tag", "model"]
    result = plots.make_plots(res, tmp_path / "figures", verbose=False)
    pngs = sorted(p.relative_to(tmp_path / "figures").as_posix() for p in (tmp_path / "figures").rglob("*.png"))
    assert pngs == ["compare/compare-literature_resnet10_long_tail_imb0.01.png"]
    assert any("named variants only" in n for n in result["notes"])


def write_confusion(csv_path: Path, **stages) -> None:
    """The run's JSON beside its CSV, holding ``confusion_test`` {stage: matrix}."""
    csv_path.with_suffix(".json").write_text(json.dumps({"confusion_test": {k: np.asarray(v).tolist()
                                                                             for k, v in stages.items()}}))


def test_figures_of_tuning_ablation_and_confusion(tmp_path):
    """Two seeds of the grid (default, control, a tuning point) and of the compare and ablation
    suites: the sensitivity, ablation and confusion figures are drawn; a confusion matrix sums
    the seeds, and a run that reused its stage 1 takes that stage's matrix from the run that trained it."""
    res = tmp_path / "results"
    eye, flip = np.eye(C, dtype=int) * 10, np.fliplr(np.eye(C, dtype=int)) * 10
    for seed in (0, 1):
        base = write_run(res, seed=seed)
        write_confusion(base, stage1=flip, stage2=eye)  # this run trained the shared stage 1
        write_confusion(write_run(res, pinned({3: 0.99}, {}), seed=seed, exp_name="tune-lr0.03-w1-8-g1.5-loss",
                                  stage2_lr=0.03, tag="tuning-quick"), stage2=flip)  # best on validation
        write_run(res, seed=seed, exp_name="control", dynamic_mode="none", stage2_loss_type="ce")
        for method in ("drw", "two_stage_ictta"):
            write_run(res / "reduced", seed=seed, exp_name=method, method=method, tag="compare-reduced")
        write_run(res / "reduced", seed=seed, exp_name="abl-ce", stage2_loss_type="ce", tag="ablation-reduced")
    summary = st.summarize_runs(st.load_rows(res))
    tuned = summary.loc[summary["variant"] == "lr0.03-w1-8-g1.5-loss", "config_id"].iloc[0]
    mats = plots.load_confusions(tuned, summary, res, [])
    np.testing.assert_array_equal(mats["stage2"], 2 * flip)
    np.testing.assert_array_equal(mats["stage1"], 2 * flip)  # from the baseline runs, which trained it
    result = plots.make_plots(res, tmp_path / "figures", verbose=False)
    for name in ("tuning_sensitivity_macro_f1.png", "ablation/reduced_resnet10_long_tail_imb0.01.png",
                 "confusion/long_tail_best.png", "forest_paired_macro_f1.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 0, name
    assert any("confusion" in n for n in result["notes"])  # the compare runs have no JSON: said, not drawn

    alone = tmp_path / "alone"  # one run, resumed in stage 2 by code that did not keep its stage-1 matrix
    write_confusion(write_run(alone), stage2=eye)
    one = st.summarize_runs(st.load_rows(alone))
    notes: list = []
    assert set(plots.load_confusions(one["config_id"].iloc[0], one, alone, notes)) == {"stage2"}
    assert any("stage1 confusion matrix missing for 1 of 1 run(s): stage1 not shown" in n for n in notes)


def test_depth_and_model_order_come_from_the_model_names():
    assert plots.resnet_depth("resnet32") == 32 and plots.resnet_depth("resnet15") == 15
    assert plots.resnet_depth("simplecnn") is None and plots.resnet_depth("myresnet8") is None
    models = ["resnet110", "resnet32", "simplecnn", "resnet10", "resnet32", float("nan")]
    assert plots.model_order(models) == ["simplecnn", "resnet10", "resnet32", "resnet110"]  # by depth, not by text
    assert list(plots.resnet_depths(models).items()) == [("resnet10", 10), ("resnet32", 32), ("resnet110", 110)]


def test_depth_trend_verdict_says_when_the_data_cannot_support_one():
    one = {"n": 1, "mean": 20.0, "std": np.nan, "ci95_lo": np.nan, "ci95_hi": np.nan}
    s = lambda lo, hi: {"n": 3, "mean": (lo + hi) / 2, "std": 1.0, "ci95_lo": lo, "ci95_hi": hi}
    assert "no trend can be claimed" in plots.trend_verdict({"resnet10": one, "resnet32": s(10, 12)})
    assert "show no depth trend" in plots.trend_verdict({"resnet10": s(10, 14), "resnet32": s(13, 20)})
    assert plots.trend_verdict({"resnet10": s(13, 20), "resnet32": s(10, 12)}).endswith(": resnet32 < resnet10")


def test_class_ticks_name_few_classes_and_no_class_of_many():
    from matplotlib.figure import Figure

    for C, most in ((10, 10), (100, 10)):
        counts = [max(1, 500 - 5 * c) for c in range(C)]
        ax = Figure().subplots()
        recorded = [f"kind{c}" for c in range(C)]  # the names a run's JSON records
        plots._class_ticks(ax, np.argsort(counts)[::-1], counts, plots.class_names(C, recorded))
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert len(labels) == most and (labels[0] == "kind0\n500" if C == 10 else labels[0].startswith("#0"))
    assert plots.class_names(3) == plots.class_names(3, ["too", "few"]) == ["class 0", "class 1", "class 2"]


def test_analysis_imports_no_training_code():
    """summary_tuning and plots read result files: importing them loads neither torch nor the
    training stack, so the tables and figures can be made on a machine that has only pandas."""
    import subprocess
    import sys

    training = ("torch", "data_loader", "model", "losses", "train_eval", "two_stage_ictta", "run_all_models",
                "launch", "methods", "config")
    check = f"import summary_tuning, plots, sys; print(sorted(m for m in {training!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_plots_with_nothing_finished(tmp_path):
    res = tmp_path / "results"
    write_run(res, upto=(1, 1))
    result = plots.make_plots(res, tmp_path / "figures", verbose=False)
    assert not list((tmp_path / "figures").rglob("*.png"))
    assert any("no finished runs" in n for n in result["notes"])


def test_summary_and_plots_on_a_real_run(tiny_run_kwargs, tmp_path):
    """The CSV that two_stage_ictta writes, not a hand-made one (synthetic 4-class data)."""
    from two_stage_ictta import run_two_stage_ictta_on_scenario

    run_two_stage_ictta_on_scenario("simplecnn", "long_tail", **{**tiny_run_kwargs, "stage1_epochs": 1})
    res = Path(tiny_run_kwargs["log_dir"])
    assert st.main(["--results", str(res), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    row = pd.read_csv(tmp_path / "out" / "summary_tuning.csv").iloc[0]
    assert row["complete"] and row["num_classes"] == 4 and row["variant"] == "two_stage"
    assert 0 <= row["s2_best_test_macro_f1"] <= 1 and row["s2_best_selected_on"] == "val"
    result = plots.make_plots(res, tmp_path / "figures", verbose=False)
    assert (tmp_path / "figures" / "curves_best" / "simplecnn_long_tail_acc_curves_best.png").exists()
    # no n_max and not CIFAR-10: the counts come from the run's JSON, so the per-class figures exist
    assert not any("training counts unknown" in n for n in result["notes"])
    assert (tmp_path / "figures" / "per_class_f1" / "simplecnn_long_tail_f1_vs_count.png").exists()
    assert any("no ResNet" in n and "depth figure skipped" in n for n in result["notes"])  # simplecnn only
    assert not (tmp_path / "figures" / "line_depth_trend_macro_f1.png").exists()


def test_training_counts_come_from_the_runs_json_not_from_cifar10(tmp_path):
    """No dataset's counts are assumed: a run of 100 classes whose JSON records its counts gets
    them, and its n_max is the largest recorded count."""
    res = tmp_path / "results"
    path = write_run(res, tag="compare-reduced", exp_name="ce", method="ce", n_max="")
    recorded = [480 - 4 * c for c in range(C)]
    path.with_suffix(".json").write_text(json.dumps({"class_counts": recorded}))
    rows = st.load_rows(res)
    assert st.class_counts_of(rows) == recorded
    assert st.summarize_runs(rows)["n_max_effective"].iloc[0] == 480


def test_a_setting_added_later_at_its_default_keeps_the_runs_in_one_configuration(tmp_path):
    """Seeds 0 and 1 come from code without the sam_rho column, seed 2 from code that writes it at
    its default (0.0) and records the defaults in its JSON: one configuration of 3 seeds; a run
    that sets it (0.5) is another configuration."""
    import config
    res = tmp_path / "results"
    for seed in (0, 1):
        write_run(res, seed=seed)
    new = write_run(res, seed=2, sam_rho=0.0)
    other = write_run(res / "sam", seed=0, sam_rho=0.5, exp_name="baseline_sam")
    for path in (new, other):
        record = json.loads(path.with_suffix(".json").read_text())
        path.with_suffix(".json").write_text(json.dumps({**record, "setting_defaults": config.identity_defaults()}))
    agg = st.aggregate_seeds(st.summarize_runs(st.load_rows(res)))
    assert sorted(agg["n_seeds"]) == [1, 3]
    assert config.identity_defaults()["sam_rho"] == 0.0 and config.identity_defaults()["lr_milestones"] == "(160, 180)"
