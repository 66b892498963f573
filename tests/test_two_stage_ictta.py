"""The two-stage run end to end: results dict, CSV and JSON, seeds, best-by-validation, bad input,
the CLI, and a small run on the real CIFAR-10 when it is here."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import config
import methods
import results_logger
import torch

import main
import two_stage_ictta as tsi
from data_loader import class_counts
from model import get_model
from results_logger import summarize_rows
from config import TwoStageConfig
from conftest import TEST_PRECISION
from two_stage_ictta import run_two_stage_ictta_on_scenario

METRICS = ("loss", "acc", "macro_f1", "tail_macro_f1")
REQUIRED_COLUMNS = ("stage", "epoch", "model", "method", "scenario", "loss", "acc", "macro_f1", "tail_macro_f1",
                    "split", "imb_factor", "seed", "lr", "seconds")


def run(model_name="simplecnn", imbalance_type="long_tail", **kw):
    return run_two_stage_ictta_on_scenario(model_name, imbalance_type, **kw)


def read_csv(results) -> pd.DataFrame:
    return pd.read_csv(results["paths"]["csv"])


def is_empty_or_absent(folder) -> bool:
    folder = Path(folder)
    return not folder.exists() or not any(folder.iterdir())


# ----------------------------------------------------------------------------------------------
# A tiny run on synthetic data

def test_a_run_warns_with_the_advice_for_its_precision(tiny_run_kwargs, monkeypatch):
    """What the advice says, and for which precision, tests/test_train_eval.py pins."""
    monkeypatch.setattr(tsi, "precision_advice", lambda device, precision: f"advice for {precision}")
    with pytest.warns(UserWarning, match=f"advice for {TEST_PRECISION}"):
        run(**{**tiny_run_kwargs, "stage1_epochs": 1, "stage2_epochs": 1})


@pytest.mark.parametrize("precision", [TEST_PRECISION, TwoStageConfig.precision])  # the other tests' and the default
def test_tiny_end_to_end(tiny_run_kwargs, precision):
    res = run(**{**tiny_run_kwargs, "precision": precision})
    C, min_w, max_w = 4, 1.0, 8.0
    # results dict: final and best per stage, on val and test
    for stage in ("stage1", "stage2"):
        assert set(res[stage]) == {"final", "best"}
        assert res[stage]["best"]["selected_on"] == "val"
        assert res[stage]["best"]["epoch"] in (1, 2)
        for kind in ("final", "best"):
            for split in ("val", "test"):
                m = res[stage][kind][split]
                assert set(METRICS) <= set(m)
                assert all(math.isfinite(m[k]) for k in METRICS)
                assert 0 <= m["acc"] <= 1 and 0 <= m["macro_f1"] <= 1
    for kind in ("final", "best"):
        for k in ("acc", "macro_f1", "tail_macro_f1"):
            assert res["delta"][f"{kind}_test_{k}"] == pytest.approx(
                res["stage2"][kind]["test"][k] - res["stage1"][kind]["test"][k], abs=1e-12)
    csv_path, json_path = Path(res["paths"]["csv"]), Path(res["paths"]["config"])
    assert csv_path.is_file() and json_path.is_file()
    assert csv_path.parent == json_path.parent == Path(tiny_run_kwargs["log_dir"])
    assert csv_path.name == "results_two_stage_ictta_simplecnn_long_tail_imb0.2_seed0.csv"
    assert not list(csv_path.parent.glob("*.ckpt.pt")) and not list(csv_path.parent.glob("*.lock"))

    # CSV: one row per stage, epoch and split, with the identity and metric columns
    df = read_csv(res)
    for col in REQUIRED_COLUMNS + tuple(f"w_{c}" for c in range(C)):
        assert col in df.columns, col
    assert "imbalance_type" not in df.columns  # written as "scenario" (_row_identity)
    assert len(df) == 8
    assert sorted(zip(df["stage"], df["epoch"], df["split"])) == sorted(
        (s, e, sp) for s in (1, 2) for e in (1, 2) for sp in ("val", "test"))
    assert (df["model"] == "simplecnn").all() and (df["method"] == "two_stage_ictta").all()
    assert (df["scenario"] == "long_tail").all() and (df["imb_factor"] == 0.2).all() and (df["seed"] == 0).all()
    assert (df["lr"] > 0).all() and (df["seconds"] >= 0).all()
    w = df[[f"w_{c}" for c in range(C)]].to_numpy()
    s1, s2 = (df["stage"] == 1).to_numpy(), (df["stage"] == 2).to_numpy()
    assert (w[s1] == 1.0).all()  # stage 1 is plain cross-entropy
    assert (w[s2] >= min_w).all() and (w[s2] <= max_w).all()
    assert np.allclose(w[s2].max(1), max_w) and np.allclose(w[s2].min(1), min_w)  # dynamic, mapped to range
    # the dict's numbers are the CSV's
    row = df[(df.stage == 2) & (df.epoch == 2) & (df.split == "test")].iloc[0]
    for k in METRICS:
        assert res["stage2"]["final"]["test"][k] == pytest.approx(row[k], rel=1e-9)

    # JSON beside the CSV: the config, the commit, the status
    meta = json.loads(json_path.read_text())
    assert meta["status"] == "finished"
    assert "git_commit" in meta
    assert meta["torch_threads"] == torch.get_num_threads()  # CPU bits depend on it
    cfg = meta["config"]
    assert cfg["model_name"] == "simplecnn" and cfg["imbalance_type"] == "long_tail"
    assert cfg["stage2_focal_gamma"] == 1.5 and cfg["dynamic_mode"] == "loss"
    # synthetic data: 60 train images per class, 5 + 5 held out -> n_max 50
    assert meta["class_counts"] == [50, 29, 17, 10] == class_counts("long_tail", 0.2, 50, C)  # 50 * 0.2^(c/3)
    assert meta["n_train"] == sum(meta["class_counts"]) and meta["n_val"] == 5 * C
    for stage in ("stage1", "stage2"):
        assert np.asarray(meta["confusion_test"][stage]).sum(1).tolist() == [15] * C  # whole test set




def test_best_epoch_is_argmax_of_val_macro_f1(tiny_run_kwargs):
    res = run(**{**tiny_run_kwargs, "stage1_epochs": 3, "stage2_epochs": 3})
    df = read_csv(res)
    for stage in (1, 2):
        d = df[df.stage == stage].sort_values("epoch")
        val = d[d.split == "val"]
        best_epoch = int(val.epoch.iloc[int(np.argmax(val.macro_f1.to_numpy()))])  # first maximum
        best = res[f"stage{stage}"]["best"]
        assert best["epoch"] == best_epoch and best["selected_on"] == "val"
        test_row = d[(d.split == "test") & (d.epoch == best_epoch)].iloc[0]
        for k in METRICS:
            assert best["test"][k] == pytest.approx(test_row[k], rel=1e-9)


def _row(stage, epoch, split, f1, acc):
    return {"stage": stage, "epoch": epoch, "split": split, "macro_f1": f1, "acc": acc, "loss": 1.0,
            "tail_macro_f1": f1 / 2}


def test_summarize_rows_selects_on_validation_never_on_test():
    # stage 1: val peaks at epoch 2 while test peaks at epoch 3; stage 2: tie at 1 and 3 -> epoch 1
    val1, test1 = [0.2, 0.6, 0.4], [0.1, 0.2, 0.9]
    val2, test2 = [0.7, 0.5, 0.7], [0.3, 0.8, 0.4]
    rows = [_row(1, e + 1, "val", v, v) for e, v in enumerate(val1)]
    rows += [_row(1, e + 1, "test", t, t) for e, t in enumerate(test1)]
    rows += [_row(2, e + 1, "val", v, v) for e, v in enumerate(val2)]
    rows += [_row(2, e + 1, "test", t, t) for e, t in enumerate(test2)]
    out = summarize_rows(rows)
    assert out["stage1"]["best"]["epoch"] == 2 and out["stage1"]["best"]["test"]["macro_f1"] == 0.2
    assert out["stage1"]["final"]["test"]["macro_f1"] == 0.9
    assert out["stage2"]["best"]["epoch"] == 1 and out["stage2"]["best"]["test"]["acc"] == 0.3
    assert out["delta"]["best_test_macro_f1"] == pytest.approx(0.3 - 0.2)
    assert out["delta"]["final_test_acc"] == pytest.approx(0.4 - 0.9)
    # without validation rows the last epoch is reported
    out = summarize_rows([r for r in rows if r["split"] == "test"])
    assert out["stage1"]["best"]["epoch"] == 3 and out["stage1"]["best"]["selected_on"] == "last"
    assert out["stage1"]["best"]["test"]["macro_f1"] == 0.9


def test_peak_is_the_highest_test_accuracy_over_both_stages_and_says_how_often_test_was_seen():
    rows = [{"stage": st, "epoch": e, "global_epoch": g, "split": split, "acc": acc, "macro_f1": f1,
             "tail_macro_f1": f1}
            for st, e, g, split, acc, f1 in [(1, 1, 1, "val", 0.5, 0.5), (1, 1, 1, "test", 0.6, 0.4),
                                             (1, 2, 2, "val", 0.6, 0.6), (1, 2, 2, "test", 0.8, 0.3),
                                             (2, 1, 3, "val", 0.9, 0.9), (2, 1, 3, "test", 0.7, 0.7)]]
    out = summarize_rows(rows)
    assert out["peak"] == {"global_epoch": 2, "stage": 1, "evaluated": 3,
                           "test": {"acc": 0.8, "macro_f1": 0.3, "tail_macro_f1": 0.3}}
    assert out["stage2"]["best"]["test"]["acc"] == 0.7  # validation still chooses the reported epoch


def test_no_validation_reports_last_epoch(tiny_run_kwargs):
    res = run(**{**tiny_run_kwargs, "val_per_class": 0, "stat_per_class": 0})
    df = read_csv(res)
    assert set(df.split) == {"test"}
    for stage in ("stage1", "stage2"):
        best, final = res[stage]["best"], res[stage]["final"]
        assert best["epoch"] == 2 and best["selected_on"] == "last"
        assert best["test"] == final["test"] and "val" not in final
    meta = json.loads(Path(res["paths"]["config"]).read_text())
    assert meta["class_counts"] == [60, 35, 20, 12]  # nothing held out: 60 * 0.2^(c/3)
    assert meta["n_val"] == 0


@pytest.mark.parametrize("dynamic_mode", ["loss", "val_error"])
def test_stage2_only_run(tiny_run_kwargs, dynamic_mode):
    """stage1_epochs=0: the first stage-2 epoch has no statistic yet, so every class weighs min_weight."""
    res = run(**{**tiny_run_kwargs, "stage1_epochs": 0, "dynamic_mode": dynamic_mode, "min_weight": 2.0,
                 "max_weight": 6.0})
    assert "stage1" not in res and set(res["stage2"]) == {"final", "best"}
    df = read_csv(res)
    assert set(df.stage) == {2}
    w = df.sort_values("epoch")[[f"w_{c}" for c in range(4)]].to_numpy()
    assert (w[df.sort_values("epoch").epoch.to_numpy() == 1] == 2.0).all()
    assert w[-1].min() == pytest.approx(2.0) and w[-1].max() == pytest.approx(6.0)




def test_unknown_setting_is_a_type_error(tiny_run_kwargs):
    with pytest.raises(TypeError, match="learning_rate"):
        run(**tiny_run_kwargs, learning_rate=0.1)
    assert is_empty_or_absent(tiny_run_kwargs["log_dir"])


# ----------------------------------------------------------------------------------------------
# Bad input: ValueError naming the parameter and what it accepts; nothing written

BAD_INPUT = [
    (dict(model_name="resnet99"), "model_name", "resnet32"),
    (dict(imbalance_type="zigzag"), "imbalance_type", "head_tail"),
    (dict(stage2_loss_type="hinge"), "stage2_loss_type", "focal"),
    (dict(dynamic_mode="random"), "dynamic_mode", "val_error"),
    (dict(imb_factor=0.0), "imb_factor", "(0, 1]"),
    (dict(imb_factor=1.5), "imb_factor", "(0, 1]"),
    (dict(imb_factor=-0.01), "imb_factor", "(0, 1]"),
    (dict(min_weight=5.0, max_weight=2.0), "min_weight", "max_weight"),
    (dict(min_weight=0.0), "min_weight", "> 0"),
    (dict(max_weight=-1.0), "max_weight", "> 0"),
    (dict(ema_alpha=1.0), "ema_alpha", "[0, 1)"),
    (dict(ema_alpha=-0.1), "ema_alpha", "[0, 1)"),
    (dict(stage1_epochs=-1), "stage1_epochs", ">= 0"),
    (dict(stage2_epochs=-2), "stage2_epochs", ">= 0"),
    (dict(batch_size=0), "batch_size", "> 0"),
    (dict(batch_size=-32), "batch_size", "> 0"),
    (dict(stage1_lr=0.0), "stage1_lr", "> 0"),
    (dict(stage2_lr=-0.01), "stage2_lr", "> 0"),
    (dict(n_max=51), "n_max", "50"),  # synthetic data: 60 per class, 5 + 5 held out
    ("junk_data_root", "data_root", "train/<class>"),
]


@pytest.mark.parametrize("bad, name, accepted", BAD_INPUT,
                         ids=[f"{name}-{i}" for i, (_, name, _) in enumerate(BAD_INPUT)])
def test_bad_input(tiny_run_kwargs, tmp_path, bad, name, accepted):
    kw = {"model_name": "simplecnn", "imbalance_type": "long_tail", **tiny_run_kwargs}
    if bad == "junk_data_root":
        junk = tmp_path / "junk"
        junk.mkdir()
        (junk / "readme.txt").write_text("not a dataset")
        bad = {"data_root": str(junk)}
    kw.update(bad)
    with pytest.raises(ValueError) as e:
        run_two_stage_ictta_on_scenario(**kw)
    msg = str(e.value)
    assert f"{name}=" in msg and accepted in msg, msg
    assert is_empty_or_absent(tiny_run_kwargs["log_dir"])


# ----------------------------------------------------------------------------------------------
# Command line

def _argv(kwargs: dict) -> list[str]:
    argv = ["--model-name", "simplecnn", "--imbalance-type", "long_tail"]
    for k in ("data_root", "log_dir", "stage1_epochs", "stage2_epochs", "batch_size", "val_per_class",
              "imb_factor", "device", "eval_batch_size"):
        argv += ["--" + k.replace("_", "-"), str(kwargs[k])]
    return argv + ["--quiet"]






def test_main_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TwoStageConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name


def _help_sections(text: str) -> dict[str, str]:
    """--help text split at its section titles (lines ending in ':' at column 0)."""
    parts = re.split(r"^(\S[^\n]*):\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_main_help_groups_options_and_lists_registry_choices(capsys):
    with pytest.raises(SystemExit):
        main.main(["--help"])
    out = capsys.readouterr().out
    sections = _help_sections(out)
    order = [list(sections).index(title) for title in config.CONFIG_GROUPS.values()]
    assert order == sorted(order)
    for f in dataclasses.fields(TwoStageConfig):
        flag = "--" + f.name.replace("_", "-")
        assert re.search(rf"^  {flag}\b", sections[config.CONFIG_GROUPS[f.metadata["group"]]], re.M), f.name
        if f.metadata["choices"]:
            assert f"{flag} {{{','.join(f.metadata['choices'])}}}" in out, f.name
    assert "``" not in out and ":class:" not in out  # no Sphinx markup
    for block in re.split(r"\n  (?=--)", out):
        assert block.count("(default") <= 1, block


def test_main_rejects_a_name_outside_its_registry_before_running(capsys):
    with pytest.raises(SystemExit) as e:
        main.main(["--model-name", "resnet10", "--imbalance-type", "long_tail", "--method", "ldam"])
    assert e.value.code == 2 and "invalid choice: 'ldam'" in capsys.readouterr().err


def test_results_go_to_an_ignored_results_folder_by_default():
    assert TwoStageConfig("resnet10", "long_tail").log_dir == "results"
    paths = ["results/x.csv", "results/stage1/s.pt", "results/x.model.pt"]
    ignored = subprocess.run(["git", "check-ignore", *paths], cwd=Path(main.__file__).parent,
                             capture_output=True, text=True)
    assert ignored.stdout.split() == paths


def test_main_runs_and_prints_table(tiny_run_kwargs, capsys):
    argv = _argv({**tiny_run_kwargs, "stage1_epochs": 1, "stage2_epochs": 1})
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "macro_f1" in out and "tail_macro_f1" in out and "stage 2" in out and "finished before" not in out
    assert len(list(Path(tiny_run_kwargs["log_dir"]).glob("results_*.csv"))) == 1
    # the same settings again: the finished result, said to be one
    assert main.main(argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("finished before with these settings") and "stage 2" in out and err == ""
    # ... and on another data root: reused (data_root is not identity), but never silently
    elsewhere = Path(tiny_run_kwargs["log_dir"]).parent / "moved_data"
    elsewhere.mkdir()
    assert main.main(_argv({**tiny_run_kwargs, "stage1_epochs": 1, "stage2_epochs": 1, "data_root": str(elsewhere)})) == 0
    err = capsys.readouterr().err
    assert f"read from {tiny_run_kwargs['data_root']}" in err and "--no-resume" in err


# ----------------------------------------------------------------------------------------------
# Real CIFAR-10, a small subset

def test_real_data_small_subset(real_root, tmp_path):
    res = run(data_root=str(real_root), log_dir=str(tmp_path / "real"), n_max=200, imb_factor=0.1,
              val_per_class=20, stage1_epochs=1, stage2_epochs=1, batch_size=64, eval_batch_size=1000,
              device="cpu", quiet=True, precision=TEST_PRECISION)
    meta = json.loads(Path(res["paths"]["config"]).read_text())
    counts = [200, 154, 119, 92, 71, 55, 43, 33, 25, 20]
    assert meta["class_counts"] == counts == class_counts("long_tail", 0.1, 200, 10)
    assert meta["n_train"] == sum(counts) and meta["n_val"] == 200
    assert meta["status"] == "finished" and meta["classes"][0] == "airplane"
    df = read_csv(res)
    assert len(df) == 4 and df[list(METRICS)].notna().all().all()
    for stage in ("stage1", "stage2"):
        conf = np.asarray(meta["confusion_test"][stage])
        assert conf.shape == (10, 10) and conf.sum(1).tolist() == [1000] * 10  # the whole test set
        assert res[stage]["final"]["test"]["acc"] == pytest.approx(np.trace(conf) / 10000)


# ----------------------------------------------------------------------------------------------
# The measured statistic, tau-norm's classifier, code identity

@pytest.mark.parametrize("mode, images", [("val_loss", "stat_idx"), ("train_eval_loss", "train_idx")])
def test_measured_statistic_reads_its_images_never_validation(tiny_run_kwargs, monkeypatch, mode, images):
    """val_loss / val_error weights come from the statistic split, train_eval_loss from the training
    images (un-augmented): every image the statistic sees is one of those, none of split.val_idx."""
    import data_loader
    import two_stage_ictta as tsi
    seen = []
    real = tsi._measured_stat
    monkeypatch.setattr(tsi, "_measured_stat",
                        lambda model, norm, counts, cfg, stat_split, mode:
                        seen.append(stat_split) or real(model, norm, counts, cfg, stat_split, mode))
    run(**{**tiny_run_kwargs, "dynamic_mode": mode})
    assert len(seen) == 2  # one per stage-2 epoch
    data = data_loader.load_dataset(tiny_run_kwargs["data_root"])
    split = data_loader.make_split(data.train_y, "long_tail", 0.2, val_per_class=5, stat_per_class=5, seed=0)
    as_images = lambda idx: data_loader.to_device_images(data.train_x[idx], "cpu")
    x, y = seen[0]
    idx = getattr(split, images)
    assert torch.equal(x, as_images(idx)) and torch.equal(y, torch.from_numpy(data.train_y[idx]))
    assert not set(idx.tolist()) & set(split.val_idx.tolist())


def test_tau_norm_drops_the_classifier_bias(tiny_run_kwargs):
    """tau-norm's logits are features @ (w_c / ||w_c||^tau), no bias: a huge bias on one class
    changes nothing of what it predicts."""
    import two_stage_ictta as tsi
    import data_loader
    torch.manual_seed(0)
    model = get_model("simplecnn", 4).eval()
    data = data_loader.load_dataset(tiny_run_kwargs["data_root"])
    norm = data_loader.Normalizer(data.mean, data.std, "cpu")
    x = data_loader.to_device_images(data.test_x, "cpu")
    y = torch.from_numpy(data.test_y)
    cfg = TwoStageConfig("simplecnn", "long_tail", eval_batch_size=64, precision="fp32", channels_last=False)
    plain = methods._evaluate_tau_norm(methods.EvalContext(model, norm, [40, 20, 10, 5], (x, y), (x, y), 512, cfg.precision, cfg.channels_last))
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([1e4, 0.0, 0.0, 0.0]))
    biased = methods._evaluate_tau_norm(methods.EvalContext(model, norm, [40, 20, 10, 5], (x, y), (x, y), 512, cfg.precision, cfg.channels_last))
    assert biased["test"]["tau"] == plain["test"]["tau"]
    assert np.array_equal(biased["test"]["confusion"], plain["test"]["confusion"])
    assert biased["test"]["confusion"][:, 0].sum() < len(y)  # not everything predicted as class 0


def test_each_stage2_epoch_is_weighted_by_the_statistic_of_the_epochs_before_it(tiny_run_kwargs, monkeypatch):
    """Scripted per-class training losses, one vector per epoch (stage 1: 2 epochs, stage 2: 2).
    Stage-2 epoch 1 is weighted by stage 1's last statistic s = (1, 2, 3, 4): w = 1 + 7 (s - 1) / 3.
    Epoch 2 by the EMA (alpha 0.5) with epoch 1's (4, 3, 2, 1): s = (2.5, 2.5, 2.5, 2.5), uniform,
    so every class gets min_weight. Stage 1 (cross-entropy) is unweighted."""
    scripted = iter([[9.0, 9.0, 9.0, 9.0], [1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0], [7.0, 0.0, 7.0, 0.0]])
    seen = []

    def fake_epoch(model, batches, optimizer, loss_fn, lr_fn, step, C, class_weights=None, **kw):
        seen.append(None if class_weights is None else class_weights.tolist())
        return {"loss": 1.0, "class_loss": torch.tensor(next(scripted), dtype=torch.float64), "steps": 1}

    monkeypatch.setattr(tsi, "train_one_epoch", fake_epoch)
    res = run(**{**tiny_run_kwargs, "ema_alpha": 0.5, "min_weight": 1.0, "max_weight": 8.0, "dynamic_mode": "loss"})
    assert seen[:2] == [None, None]
    assert seen[2] == pytest.approx([1.0, 1.0 + 7 / 3, 1.0 + 14 / 3, 8.0])
    assert seen[3] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    df = read_csv(res)
    logged = df[(df.stage == 2) & (df.split == "test")].sort_values("epoch")[[f"w_{c}" for c in range(4)]]
    np.testing.assert_allclose(logged.to_numpy(), np.array(seen[2:]), rtol=1e-6)  # the CSV logs the weights used


def test_tau_norm_chooses_tau_on_validation_and_reports_test_at_it(monkeypatch):
    """Classifier rows w_0 = (4, 0), w_1 = (0, 1): tau-normalised logits (4^(1-tau) f_0, f_1).
    Validation: f = (1, 0) is class 0 for every tau; f = (1, 1.9) is class 1 only when
    4^(1-tau) < 1.9, i.e. tau > 0.537: the smallest tau of the grid with both right is 0.6. Test:
    f = (1, 2.5) of class 0 is right only for tau < 0.339, so test would pick a smaller tau, and
    must not."""
    monkeypatch.setattr(methods, "predict", lambda model, x, *a, **k: x)  # the "images" are the features
    model = torch.nn.Module()
    model.fc = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
    val = (torch.tensor([[1.0, 0.0], [1.0, 1.9]]), torch.tensor([0, 1]))
    test = (torch.tensor([[1.0, 2.5], [0.0, 1.0]]), torch.tensor([0, 1]))
    out = methods._evaluate_tau_norm(methods.EvalContext(model, None, [2, 2], val, test, 512, "bf16", True))
    assert out["val"]["tau"] == out["test"]["tau"] == 0.6
    assert out["val"]["macro_f1"] == 1.0
    assert out["test"]["confusion"].tolist() == [[0, 1], [0, 1]]  # at tau 0.6 the class-0 test image is lost


def _copy_project(dst: Path) -> Path:
    root = Path(__file__).resolve().parents[1]
    dst.mkdir()
    for f in root.glob("*.py"):
        (dst / f.name).write_text(f.read_text())
    return dst


def _cli_run(project: Path, log_dir: Path, data_root: Path, *extra: str) -> tuple[dict, str]:
    cmd = [sys.executable, "main.py", "--model-name", "simplecnn", "--imbalance-type", "long_tail",
           "--method", "drw", "--stage1-epochs", "1", "--stage2-epochs", "1", "--batch-size", "32",
           "--val-per-class", "5", "--stat-per-class", "5", "--imb-factor", "0.2", "--device", "cpu",
           "--precision", TEST_PRECISION, "--quiet", "--data-root", str(data_root), "--log-dir", str(log_dir), *extra]
    r = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads(next(log_dir.glob("results_*.json")).read_text())
    return meta, r.stderr


def test_code_change_reruns_unless_accepted(synthetic_root, tmp_path):
    """A finished run and its stage 1 made by other code are not reused: the rerun retrains, with
    one line saying why. accept_code_change keeps them, and the JSON lists every fingerprint seen."""
    project, log_dir = _copy_project(tmp_path / "project"), tmp_path / "runs"
    first, _ = _cli_run(project, log_dir, synthetic_root)
    (project / "losses.py").write_text((project / "losses.py").read_text() + "\nNEW_CONSTANT = 1\n")
    second, err = _cli_run(project, log_dir, synthetic_root)
    assert "rerunning" in err and "made by other code" in err and "stage 1" in err
    assert second["code_fingerprint"] != first["code_fingerprint"]
    assert second["code_fingerprints"] == [second["code_fingerprint"]]
    assert second["finished"] >= first["finished"] and not second["stage1_reused"]

    (project / "losses.py").write_text((project / "losses.py").read_text() + "\nOTHER_CONSTANT = 2\n")
    kept, err = _cli_run(project, log_dir, synthetic_root, "--accept-code-change")
    assert kept == second and "rerunning" not in err  # skipped: the JSON is untouched
    (log_dir / next(log_dir.glob("results_*.json")).name).unlink()  # force a run that reuses stage 1
    resumed, _ = _cli_run(project, log_dir, synthetic_root, "--accept-code-change")
    assert resumed["stage1_reused"]
    assert set(resumed["confusion_test"]) == {"stage1", "stage2"}  # stage 1's matrix came with its checkpoint
    assert resumed["code_fingerprints"] == [second["code_fingerprint"], resumed["code_fingerprint"]]


def test_the_dataset_is_part_of_a_runs_identity_and_cifar10_ids_stay_as_they_were():
    import hashlib

    c10 = TwoStageConfig("resnet10", "long_tail")
    c100 = dataclasses.replace(c10, dataset="cifar100")
    # a CIFAR-10 run's id is the hash it had before the dataset setting existed: its non-default settings
    before = {"model_name": "resnet10", "imbalance_type": "long_tail"}
    assert config.config_hash(c10) == hashlib.sha1(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:12]
    assert config.config_hash(c100) != config.config_hash(c10) and config.stage1_hash(c100) != config.stage1_hash(c10)
    assert config.run_name(c10) == "results_two_stage_ictta_resnet10_long_tail_imb0.01_seed0"
    assert config.run_name(c100) == "results_two_stage_ictta_resnet10_cifar100_long_tail_imb0.01_seed0"
    assert config.config_hash(dataclasses.replace(c10, download=True)) == config.config_hash(c10)  # not identity


def test_code_fingerprint_ignores_docstrings_and_comments(tmp_path):
    import two_stage_ictta as tsi
    project = _copy_project(tmp_path / "project")
    before = results_logger.code_fingerprint(str(project))
    src = (project / "losses.py").read_text()
    (project / "losses.py").write_text(src.replace('"""Losses and class weights', '"""Losses and weights', 1)
                                       + "\n# a comment\n")
    assert results_logger.code_fingerprint.__wrapped__(str(project)) == before
    (project / "losses.py").write_text(src.replace("SPREAD_RTOL = 1e-6", "SPREAD_RTOL = 1e-5"))
    assert results_logger.code_fingerprint.__wrapped__(str(project)) != before


def test_crt_stage2_batchnorm_follows_the_class_balanced_batches(tiny_run_kwargs, monkeypatch):
    """cRT's backbone is frozen but in train mode (as classifier-balancing trains it): its weights
    stay, its BatchNorm running statistics move in every stage-2 epoch."""
    import two_stage_ictta as tsi
    moves = []
    real = tsi.train_one_epoch

    def spy(model, *args, **kwargs):
        conv, bn = model.body[0].weight.clone(), model.body[1].running_mean.clone()
        out = real(model, *args, **kwargs)
        moves.append((model.training, torch.equal(conv, model.body[0].weight),
                      torch.equal(bn, model.body[1].running_mean)))
        return out

    monkeypatch.setattr(tsi, "train_one_epoch", spy)
    run(**{**tiny_run_kwargs, "method": "crt"})
    stage2 = moves[tiny_run_kwargs["stage1_epochs"]:]
    assert stage2 and all(training and conv_kept and not bn_kept for training, conv_kept, bn_kept in stage2)


def test_run_identity_ignores_settings_left_at_their_default():
    """config_hash hashes the settings that differ from their defaults: naming a default changes
    nothing, so adding a new setting with a neutral default keeps earlier runs' identities."""
    import two_stage_ictta as tsi
    plain = TwoStageConfig("resnet10", "long_tail")
    assert config.config_hash(plain) == config.config_hash(dataclasses.replace(plain, prior_blend=0.0,
                                                                           lr_milestones=[160, 180]))
    assert config.config_hash(plain) != config.config_hash(dataclasses.replace(plain, prior_blend=0.5))
    assert config.config_hash(plain) == config.config_hash(dataclasses.replace(plain, tag="other label"))


# one other valid value per setting (a new setting must be added here, and declared at its field)
OTHER_VALUE = {
    "model_name": "resnet20", "imbalance_type": "head_tail", "stage1_epochs": 3, "stage2_epochs": 3,
    "imb_factor": 0.1, "batch_size": 64, "log_dir": "elsewhere", "stage1_lr": 0.2, "stage2_lr": 0.02,
    "min_weight": 0.5, "max_weight": 4.0, "ema_alpha": 0.5, "stage2_loss_type": "ce", "stage2_focal_gamma": 2.0,
    "dynamic_mode": "val_loss", "exp_name": "other", "method": "drw", "seed": 1, "device": "cpu",
    "dataset": "cifar100", "data_root": "/some/other/root", "download": True, "val_per_class": 10,
    "stat_per_class": 10, "n_max": 100, "momentum": 0.5, "weight_decay": 1e-3, "warmup_epochs": 0.0,
    "schedule": "step", "lr_milestones": (1, 2), "lr_decay": 0.1, "focal_gamma": 2.0, "cb_beta": 0.99,
    "ldam_max_margin": 0.3,
    "ldam_scale": 10.0, "prior_blend": 0.5, "weight_map": "power", "map_power": 2.0, "stage2_schedule": "cosine", "normed_init": "uniform", "la_tau": 0.5,
    "mixup_alpha": 1.0, "sam_rho": 0.5, "precision": "fp32", "channels_last": False, "compile": True, "compile_mode": "reduce-overhead",
    "eval_every": 2, "eval_batch_size": 64, "threads": 2, "quiet": True, "tensorboard": True, "resume": False,
    "reuse_stage1": False, "accept_code_change": True, "tag": "x", "jpeg_quality": 50,
}


def test_a_setting_at_its_default_leaves_identities_alone():
    """An identity hashes the settings that differ from their defaults (the code fingerprint
    guards the defaults), so a setting added with a default that keeps the old behaviour leaves
    earlier runs' identities alone; set, it changes them."""
    base = TwoStageConfig("resnet10", "long_tail", method="ce", data_root="/data/cifar10")
    assert config.stage1_hash(dataclasses.replace(base, jpeg_quality=None)) == config.stage1_hash(base)
    assert config.stage1_hash(dataclasses.replace(base, jpeg_quality=50)) != config.stage1_hash(base)
    assert config.config_hash(dataclasses.replace(base, weight_map="minmax")) == config.config_hash(base)
    assert config.config_hash(dataclasses.replace(base, weight_map="power")) != config.config_hash(base)


def test_jpeg_quality_re_encodes_every_split_the_run_uses(tiny_run_kwargs):
    import data_loader
    plain = TwoStageConfig("simplecnn", "long_tail", **tiny_run_kwargs)
    rd, lossy = (tsi.prepare_data(c, torch.device("cpu")) for c in (plain, dataclasses.replace(plain, jpeg_quality=20)))
    for split in ("train", "val", "stat", "test"):
        x, y = getattr(rd, split)
        expected = data_loader.recompress_jpeg(x.permute(0, 2, 3, 1).numpy(), 20)
        assert torch.equal(getattr(lossy, split)[1], y), split
        assert np.array_equal(getattr(lossy, split)[0].permute(0, 2, 3, 1).numpy(), expected), split
        assert not torch.equal(getattr(lossy, split)[0], x), split


def test_stage1_identity_changes_exactly_as_each_field_declares():
    """Changing one setting alone changes stage 1's identity unless its field says it does not
    matter to stage 1 (identity=False, stage2_only, label) or it is a loss setting that the
    method's stage 1 does not read; data_root counts through the data path, the method through its
    stage-1 loss, weights and classifier."""
    fields = dataclasses.fields(TwoStageConfig)
    assert set(OTHER_VALUE) == {f.name for f in fields}
    for method in ("ce", "cb_focal", "ldam_drw", "logit_adjust", "drw"):
        base = TwoStageConfig("resnet10", "long_tail", method=method)
        for f in (f for f in fields if f.name != "method"):  # the method: below
            changed = dataclasses.replace(base, **{f.name: OTHER_VALUE[f.name]})
            meta = f.metadata
            unread = f.name in methods.LOSS_SETTINGS - methods.METHODS[method].reads(1)
            expected = f.name == "data_root" or (meta["identity"] and not meta["stage2_only"] and not meta["label"]
                                                 and not unread)
            assert (config.stage1_hash(changed) != config.stage1_hash(base)) == expected, (method, f.name)
    base = TwoStageConfig("resnet10", "long_tail", method="ce")
    assert config.stage1_hash(dataclasses.replace(base, la_tau=0.5)) == config.stage1_hash(base)
    assert config.stage1_hash(dataclasses.replace(base, method="logit_adjust", la_tau=0.5)) != \
        config.stage1_hash(dataclasses.replace(base, method="logit_adjust"))
    same_stage1 = {n for n, m in methods.METHODS.items()
                   if (m.loss1, m.weights1, m.normed_classifier) == ("ce", "none", False)}
    assert {"ce", "drw", "crt", "tau_norm", "two_stage_ictta"} <= same_stage1
    assert {config.stage1_hash(dataclasses.replace(base, method=n)) for n in same_stage1} == {config.stage1_hash(base)}
    assert config.stage1_hash(dataclasses.replace(base, method="focal")) != config.stage1_hash(base)


def test_held_out_statistic_from_the_statistic_split(monkeypatch):
    """val_error is 1 - recall per class, val_loss the per-class loss as evaluate gives it; a class
    the split lacks is NaN (the weights refuse it) rather than an error of 1 or a loss of 0."""
    class_loss = torch.tensor([0.1, 0.7, 1.3, float("nan")])
    monkeypatch.setattr(tsi, "evaluate", lambda *a, **k: {"class_loss": class_loss, "recall": np.array([1.0, 0.5, 0.25, 0.0]),
                                                          "support": np.array([5, 5, 5, 0])})
    cfg = TwoStageConfig("simplecnn", "long_tail")
    error = tsi._measured_stat(None, None, [4, 3, 2, 1], cfg, (None, None), "val_error")
    assert error[:3].tolist() == [0.0, 0.5, 0.75] and math.isnan(error[3])
    assert tsi._measured_stat(None, None, [4, 3, 2, 1], cfg, (None, None), "val_loss") is class_loss
    with pytest.raises(FloatingPointError, match="not a finite vector"):
        tsi.losses.DynamicClassWeights(4, mode="val_error").update(error)


def test_data_read_elsewhere_compares_resolved_folders(tmp_path):
    cfg = TwoStageConfig("simplecnn", "long_tail", data_root=str(tmp_path / "data"))
    assert tsi.data_read_elsewhere(cfg, {"data_source": str(tmp_path / "data")}) is None
    assert tsi.data_read_elsewhere(cfg, {"data_source": str(tmp_path / "data" / "cifar-10-batches-py")}) is None
    assert tsi.data_read_elsewhere(cfg, {"data_source": str(tmp_path / "other")}) == str(tmp_path / "other")
    assert tsi.data_read_elsewhere(cfg, {"data_source": "data/cifar10"}) is None  # as typed by an older run: no telling
    assert tsi.data_read_elsewhere(cfg, {}) is None


# ----------------------------------------------------------------------------------------------
# The newer methods' stage 2, and their runs resumed

def spy_stage2(monkeypatch, stage1_epochs: int) -> list:
    """Each stage-2 call of train_one_epoch: the model and optimizer before it, and the backbone's
    first conv and BatchNorm statistics before and after."""
    seen, real = [], tsi.train_one_epoch

    def spy(model, batches, optimizer, *args, **kwargs):
        before = (model.body[0].weight.clone(), model.body[1].running_mean.clone())
        out = real(model, batches, optimizer, *args, **kwargs)
        seen.append(dict(model=model, groups=optimizer.param_groups, kwargs=kwargs, conv=before[0], bn=before[1],
                         conv_kept=torch.equal(before[0], model.body[0].weight),
                         bn_kept=torch.equal(before[1], model.body[1].running_mean)))
        return out

    monkeypatch.setattr(tsi, "train_one_epoch", spy)
    return seen


def test_mislas_stage2_trains_the_classifier_and_logit_scale_on_a_frozen_backbone(tiny_run_kwargs, monkeypatch):
    seen = spy_stage2(monkeypatch, tiny_run_kwargs["stage1_epochs"])
    run(**{**tiny_run_kwargs, "method": "mislas", "mixup_alpha": 1.0})
    stage1, stage2 = seen[:2], seen[2:]
    assert [c["kwargs"]["mixup_alpha"] for c in seen] == [1.0, 1.0, 0.0, 0.0]  # mixup in stage 1 only
    assert stage2 and all(c["conv_kept"] and c["bn_kept"] and c["kwargs"]["freeze_bn_stats"] for c in stage2)
    assert not any(c["kwargs"]["freeze_bn_stats"] for c in stage1)
    fc = stage2[0]["model"].fc
    assert isinstance(fc, torch.nn.Sequential) and fc[1].scale.shape == (fc[0].out_features,)
    assert not torch.equal(fc[1].scale.detach(), torch.ones_like(fc[1].scale))  # the scale trained
    classifier, scale = stage2[0]["groups"]
    assert classifier["lr_scale"] == 0.5 and "lr_scale" not in scale
    assert [p.shape for p in classifier["params"]] == [fc[0].weight.shape, fc[0].bias.shape]


def test_weight_balancing_stage2_holds_the_classifier_rows_within_the_stage1_radius(tiny_run_kwargs, monkeypatch):
    import losses
    seen = spy_stage2(monkeypatch, tiny_run_kwargs["stage1_epochs"])
    stage1_fc = {}
    real_enter = methods.balance_classifier

    def enter(model, fresh, seed):
        stage1_fc["weight"] = model.fc.weight.detach().clone()
        return real_enter(model, fresh, seed)

    monkeypatch.setitem(methods.METHODS, "weight_balancing",
                        dataclasses.replace(methods.METHODS["weight_balancing"], enter_stage2=enter))
    run(**{**tiny_run_kwargs, "method": "weight_balancing", "weight_decay": 5e-3})
    radius = losses.max_norm_radius(stage1_fc["weight"], 0.1)
    stage2 = seen[2:]
    assert [c["kwargs"]["max_norm"] for c in seen] == [None, None, radius, radius]
    assert all(c["conv_kept"] and not c["bn_kept"] for c in stage2)  # frozen, BatchNorm in train mode
    assert [g["weight_decay"] for g in stage2[0]["groups"]] == [0.1]
    assert stage2[-1]["model"].fc.weight.norm(dim=1).max() <= radius * (1 + 1e-6)


def test_a_run_stopped_in_its_first_epoch_leaves_no_csv_and_says_so_in_its_json(tiny_run_kwargs, monkeypatch):
    """Nothing finished, nothing to read: an empty CSV would break every reader of the folder."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tsi, "train_one_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        run(**tiny_run_kwargs)
    folder = Path(tiny_run_kwargs["log_dir"])
    assert not list(folder.glob("results_*.csv"))
    [record] = [json.loads(p.read_text()) for p in folder.glob("results_*.json")]
    assert record["status"] == "interrupted"


def test_a_run_behind_in_stage1_goes_on_from_the_shared_stage1_another_run_finished(tiny_run_kwargs, monkeypatch,
                                                                                      capsys):
    """Stopped in stage 1 while another run with the same stage 1 finished it: the first goes on from
    the shared one, as the plan says, and its stage-1 rows are the other run's."""
    import launch

    calls, real = [], tsi.train_one_epoch

    def stop_at_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tsi, "train_one_epoch", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):  # its own checkpoint: stage-1 epoch 1 of 2
        run(**tiny_run_kwargs, exp_name="behind")
    monkeypatch.setattr(tsi, "train_one_epoch", real)
    behind = TwoStageConfig("simplecnn", "long_tail", **tiny_run_kwargs, exp_name="behind")
    assert launch.resume_point(behind) == (1, 1)
    other = run(**tiny_run_kwargs, exp_name="other", stage2_lr=0.02)  # trains the stage 1 and shares it
    assert launch.resume_point(behind) is None
    capsys.readouterr()
    again = run(**tiny_run_kwargs, exp_name="behind")
    assert again["stage1_reused"] and again["resumed_from"] is None
    assert "not from its own checkpoint at stage-1 epoch 1" in capsys.readouterr().err
    stage1_rows = [read_csv(r).query("stage == 1").drop(columns=["seconds", "run_id", "exp_name", "stage2_lr"])
                   for r in (other, again)]
    pd.testing.assert_frame_equal(*stage1_rows)


NEWER = {"mislas": dict(method="mislas", mixup_alpha=1.0),
         "weight_balancing": dict(method="weight_balancing", weight_decay=5e-3),
         "drw_sam": dict(method="drw", sam_rho=0.5)}


@pytest.mark.parametrize("name", sorted(NEWER))
def test_newer_method_interrupted_in_stage2_resumes_to_the_uninterrupted_rows(tiny_run_kwargs, monkeypatch, name):
    """Stopped during stage-2 epoch 2, the same call resumes from epoch 1's checkpoint (MiSLAS's
    classifier shape, weight balancing's radius, SAM's optimizer) and writes the same numbers."""
    kw = {**tiny_run_kwargs, **NEWER[name]}
    ref = read_csv(run(**kw, exp_name="ref"))
    calls, real = [], tsi.train_one_epoch

    def stop_at_the_second(*args, **kwargs):  # stage 1 comes from ref's: call 2 is stage-2 epoch 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tsi, "train_one_epoch", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(**kw, exp_name="again")
    monkeypatch.setattr(tsi, "train_one_epoch", real)
    again = run(**kw, exp_name="again")
    assert again["resumed_from"] == (2, 1)
    drop = ["seconds", "run_id", "exp_name"]
    pd.testing.assert_frame_equal(ref.drop(columns=drop), read_csv(again).drop(columns=drop))


def test_a_run_refuses_a_name_that_holds_other_settings_and_names_them(tiny_run_kwargs):
    kwargs = {**tiny_run_kwargs, "stage1_epochs": 1, "stage2_epochs": 1}
    run(**kwargs)
    with pytest.raises(ValueError, match=r"already holds a run with other settings \(stage2_lr 0\.01 there, "
                                         r"0\.02 here\); choose another exp_name or log_dir"):
        run(**{**kwargs, "stage2_lr": 0.02})
