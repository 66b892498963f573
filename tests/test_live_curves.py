"""live_curves: --tensorboard writes each epoch's curves when the package is there; the project
never needs it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import live_curves
import main
from two_stage_ictta import run_two_stage_ictta_on_scenario

ROOT = Path(__file__).resolve().parents[1]


def test_the_project_never_imports_tensorboard_unasked(tiny_run_kwargs):
    code = ("import sys, main, run_all_models, summary_tuning, plots, two_stage_ictta as t; "
            f"t.run_two_stage_ictta_on_scenario('simplecnn', 'long_tail', **{tiny_run_kwargs!r}); "
            "print(sorted(m for m in sys.modules if 'tensorboard' in m))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_asking_without_the_package_is_one_line_before_anything_runs(tiny_run_kwargs, monkeypatch, capsys):
    monkeypatch.setattr(live_curves, "available", lambda: False)
    argv = ["--model-name", "simplecnn", "--imbalance-type", "long_tail", "--tensorboard", "--device", "cpu",
            "--data-root", tiny_run_kwargs["data_root"], "--log-dir", tiny_run_kwargs["log_dir"]]
    with pytest.raises(SystemExit) as e:
        main.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "pip install tensorboard" in err
    assert not Path(tiny_run_kwargs["log_dir"]).exists()


def test_event_files_hold_each_epochs_losses_metrics_and_class_weights(tiny_run_kwargs, tmp_path):
    if not live_curves.available():
        pytest.skip("the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run_two_stage_ictta_on_scenario("simplecnn", "long_tail", tensorboard=True, **tiny_run_kwargs)
    folder = Path(tiny_run_kwargs["log_dir"]) / "tensorboard" / Path(res["paths"]["csv"]).stem
    assert list(folder.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folder))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/macro_f1", "test/macro_f1", "test/tail_macro_f1", "test/few_acc",
            "class_weight/0", "class_weight/3"} <= tags
    df = pd.read_csv(res["paths"]["csv"])
    test = df[df["split"] == "test"].sort_values("global_epoch")
    logged = events.Scalars("test/macro_f1")
    assert [e.step for e in logged] == test["global_epoch"].tolist() == [1, 2, 3, 4]
    assert [e.value for e in logged] == pytest.approx(test["macro_f1"].tolist())
    assert [e.value for e in events.Scalars("class_weight/3")] == pytest.approx(test["w_3"].tolist())

    plain = run_two_stage_ictta_on_scenario("simplecnn", "long_tail", **{**tiny_run_kwargs,
                                                                         "log_dir": str(tmp_path / "plain")})
    drop = ["seconds"]  # the CSV stays the record, the same with curves or without
    pd.testing.assert_frame_equal(df.drop(columns=drop), pd.read_csv(plain["paths"]["csv"]).drop(columns=drop))
