"""precision_check.compare: the paired differences and the seed-noise verdict."""
import math

import pytest

from precision_check import compare, main


def _runs(fast, ref):
    return {"fast": [{"acc": a, "macro_f1": a, "tail_macro_f1": a} for a in fast],
            "fp32": [{"acc": a, "macro_f1": a, "tail_macro_f1": a} for a in ref]}


def test_paired_differences_and_spread():
    res = compare(_runs([0.70, 0.72, 0.74], [0.71, 0.71, 0.75]))["acc"]
    assert res["diffs"] == pytest.approx([-0.01, 0.01, -0.01])
    assert res["diff_mean"] == pytest.approx(-0.01 / 3)
    assert res["fast_sd"] == pytest.approx(0.02)          # sample sd of 0.70, 0.72, 0.74
    assert res["diff_se"] == pytest.approx(math.sqrt(((2 / 300) ** 2 * 2 + (4 / 300) ** 2) / 2) / math.sqrt(3))


def test_verdict_flags_a_systematic_drop():
    assert compare(_runs([0.70, 0.72, 0.74], [0.71, 0.71, 0.75]))["acc_within_seed_noise"]
    # fast path 5 points below on every seed, seeds agree within 2 points: not noise
    assert not compare(_runs([0.65, 0.67, 0.69], [0.70, 0.72, 0.74]))["acc_within_seed_noise"]


@pytest.mark.parametrize("argv, says", [(["--seeds", "0"], "at least 2 different seeds"),
                                        (["--seeds", "0", "0"], "at least 2 different seeds"),
                                        (["--model", "vgg"], "model_name='vgg'"), (["--threads", "0"], "threads=0"),
                                        (["--device", "tpu"], "device")])
def test_bad_settings_are_one_line_before_any_run(argv, says, tmp_path, capsys, monkeypatch):
    import precision_check
    monkeypatch.setattr(precision_check, "run_two_stage", lambda cfg: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and says in err


def test_a_missing_dataset_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data-root", str(tmp_path / "nodata"), "--device", "cpu", "--out", str(tmp_path / "runs"),
              "--json", str(tmp_path / "c.json"), "--experiment", "smoke"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "no dataset at data_root=" in err


def test_each_method_gets_its_own_paired_comparison(synthetic_root, tmp_path):
    """The check covers LDAM-DRW and logit adjustment beside the two-stage method; every method
    runs fp32 and the fast path on every seed."""
    import json
    out = tmp_path / "check.json"
    main(["--seeds", "0", "1", "--experiment", "smoke", "--device", "cpu", "--data-root", str(synthetic_root),
          "--out", str(tmp_path / "runs"), "--json", str(out), "--methods", "ldam_drw", "logit_adjust"])
    report = json.loads(out.read_text())
    assert set(report["comparison"]) == {"ldam_drw", "logit_adjust"}
    for method, runs in report["runs"].items():
        assert [r["seed"] for r in runs["fp32"]] == [r["seed"] for r in runs["fast"]] == [0, 1]
    assert len(list((tmp_path / "runs").glob("results_precision-ldam_drw-*.json"))) == 4
