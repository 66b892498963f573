"""saved_model: a finished run keeps its model, and evaluating the file gives the run's test numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import main
import saved_model
import train_eval
from model import get_model
from two_stage_ictta import run_two_stage_ictta_on_scenario

KEYS = {"state_dict", "model_name", "num_classes", "normed_classifier", "normed_init", "mean", "std",
        "class_counts", "classes", "tau", "config", "run_id", "code_fingerprint", "git_commit"}


@pytest.mark.parametrize("method, jpeg_quality", [("two_stage_ictta", None), ("ldam_drw", None), ("tau_norm", None),
                                                  ("ce", 10)])
def test_the_saved_model_reproduces_the_runs_final_test_numbers(tiny_run_kwargs, method, jpeg_quality):
    res = run_two_stage_ictta_on_scenario("simplecnn", "long_tail", method=method, jpeg_quality=jpeg_quality,
                                          **tiny_run_kwargs)
    path = Path(res["paths"]["model"])
    assert path.name == Path(res["paths"]["csv"]).name.replace(".csv", ".model.pt")
    record = torch.load(path, map_location="cpu", weights_only=True)  # plain data, no pickled code
    assert set(record) == KEYS
    assert record["normed_classifier"] == (method == "ldam_drw") and (record["tau"] is not None) == (method == "tau_norm")
    assert record["config"]["method"] == method and record["class_counts"] == [50, 29, 17, 10]

    ev = saved_model.evaluate_file(path, device="cpu")
    run_test = res["stage2"]["final"]["test"]
    for k in ("acc", "macro_f1", "tail_macro_f1", "many_acc", "few_acc", "loss"):
        assert ev["test"][k] == pytest.approx(run_test[k], abs=1e-6), k
    meta = json.loads(Path(res["paths"]["config"]).read_text())
    assert np.array_equal(ev["test"]["confusion"], meta["confusion_test"]["stage2"])


def test_a_resnet32_file_is_about_2_mb(tmp_path):
    """The README's "about 2 MB for ResNet-32", measured on a file that save() wrote."""
    from types import SimpleNamespace

    from config import TwoStageConfig

    cfg = TwoStageConfig("resnet32", "long_tail")
    data = SimpleNamespace(num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3, classes=[str(c) for c in range(10)])
    path = tmp_path / "r32.model.pt"
    saved_model.save(path, get_model("resnet32", 10), cfg, data, [100] * 10, [], "run", "code")
    assert 1.8e6 < path.stat().st_size < 2.2e6


def test_evaluate_from_the_command_line(tiny_run_kwargs, tmp_path, capsys):
    res = run_two_stage_ictta_on_scenario("simplecnn", "long_tail", **tiny_run_kwargs)
    out = tmp_path / "new_folder" / "metrics.json"  # its folder is made
    assert main.main(["--evaluate", res["paths"]["model"], "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    acc = res["stage2"]["final"]["test"]["acc"]
    assert f"acc {100 * acc:.2f}" in printed and "confusion matrix (rows: true class" in printed
    written = json.loads(out.read_text())
    assert written["test"]["acc"] == pytest.approx(acc) and len(written["test"]["confusion"]) == 4
    junk = tmp_path / "notes.model.pt"
    junk.write_text("not a model")
    with pytest.raises(SystemExit) as e:
        main.main(["--evaluate", str(junk)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "not a model file" in err
    empty = tmp_path / "empty.model.pt"
    empty.write_bytes(b"")
    for argv, says in ((["--evaluate", str(empty)], "not a model file of this project (the file is empty or cut short)"),
                       (["--evaluate", res["paths"]["model"], "--json", str(tmp_path)], "is a folder"),
                       (["--evaluate", res["paths"]["model"], "--json", "/proc/nowhere/m.json"], "cannot be written")):
        with pytest.raises(SystemExit) as e:
            main.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and says in err, argv


def _confidence_script():
    import importlib.util
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "literature_cpu_2026-12-04" / "confidence.py"
    spec = importlib.util.spec_from_file_location("confidence", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_confidence_report_gives_the_runs_ece_and_for_a_cosine_classifier_the_scaled_one(tiny_run_kwargs):
    res = run_two_stage_ictta_on_scenario("simplecnn", "long_tail", method="ldam_drw", **tiny_run_kwargs)
    path = res["paths"]["model"]
    report = _confidence_script().confidence_report(path)

    t = saved_model.logits_on_test(path, device="cpu")
    scaled_ece = train_eval.expected_calibration_error((30.0 * t["logits"].float()).softmax(1), t["y"])
    recorded_ece = res["stage2"]["final"]["test"]["ece"]
    assert f"ECE {recorded_ece:.4f}; scores x 30:" in report
    assert report.endswith(f"ECE {scaled_ece:.4f}") and abs(scaled_ece - recorded_ece) > 1e-3
