"""cli: every script's usage error is one line that names the fix; the output-folder check."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import bench
import cli
import main
import neutrality_check
import plots
import precision_check
import run_all_models
import summary_tuning

ROOT = Path(__file__).resolve().parents[1]
ONE_LINE = re.compile(r"^(\S+): error: .+; see \1 --help\n$")


@pytest.mark.parametrize("script, argv, names", [
    (main.main, ["--model-name", "resnet99", "--imbalance-type", "long_tail"], "resnet99"),
    (main.main, ["--imbalance-type", "long_tail"], "--model-name"),
    (main.main, ["--model-name", "resnet10", "--imbalance-type", "long_tail", "--imb-factor", "2"], "imb_factor"),
    (main.main, ["--model-name", "resnet10", "--imbalance-type", "long_tail", "--learning-rate", "0.1"],
     "--learning-rate"),
    (main.main, ["--model-name", "resnet10", "--imbalance-type", "long_tail", "--batch-size", "many"],
     "--batch-size"),
    (run_all_models.main, ["--profile", "nope"], "nope.yaml: no such experiment file"),
    (run_all_models.main, ["--jobs", "2"], "--jobs"),
    (bench.main, ["--model", "vgg"], "model"),
    (precision_check.main, ["--seeds", "0"], "--seeds"),
    (precision_check.main, ["--no-such-flag"], "--no-such-flag"),
    (summary_tuning.main, ["--no-such-flag"], "--no-such-flag"),
    (plots.main, ["--no-such-flag"], "--no-such-flag"),
    (neutrality_check.main, [], "--old"),
], ids=lambda v: getattr(v, "__module__", None) or (" ".join(v) if isinstance(v, list) else v))
def test_usage_errors_are_one_line_naming_the_fix(script, argv, names, capsys):
    with pytest.raises(SystemExit) as e:
        script(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert ONE_LINE.match(err), err
    assert names in err


def test_the_line_names_the_script_as_the_user_typed_it(tmp_path):
    r = subprocess.run([sys.executable, "main.py", "--model-name", "resnet10"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr == ("main.py: error: the following arguments are required: --imbalance-type; "
                        "see main.py --help\n")


def test_a_multi_line_message_is_folded_into_one_line(capsys):
    with pytest.raises(SystemExit):
        cli.ArgumentParser(prog="x.py").error("first\nsecond")
    assert capsys.readouterr().err == "x.py: error: first second; see x.py --help\n"


def test_unwritable_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert "is a file" in cli.unwritable_folder(blocker)
    assert "is a file" in cli.unwritable_folder(blocker / "sub" / "dir")
    assert cli.unwritable_folder(tmp_path / "new" / "folder") is None
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert "cannot be written" in cli.unwritable_folder("/proc/no_such_folder")  # os.access says yes to root
    assert set(tmp_path.iterdir()) == {blocker}  # no probe file left behind
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests run as root, who may write anywhere
    assert "cannot be written" in cli.unwritable_folder(tmp_path / "new")


def _every_planned_config():
    """Configs of every experiment file, plus settings no plan uses (a bool off,
    a None-able field set, other milestones), so that each field kind is rebuilt from its options."""
    import dataclasses

    cfgs = [c for name in run_all_models.experiment_names()
            for _, part in run_all_models.plan_experiment(
                run_all_models.load_experiment(run_all_models.experiment_path(name)), "/tmp/x")
            for c in part]
    extra = dataclasses.replace(cfgs[0], channels_last=not cfgs[0].channels_last, n_max=4850, threads=1,
                                lr_milestones=(7, 9), normed_init="uniform", stage1_lr=0.05)
    return cfgs + [extra]


def test_config_argv_rebuilds_every_planned_config():
    parser = main.build_parser()
    for cfg in _every_planned_config():
        argv = main.config_argv(cfg)
        assert main.config_from_args(parser.parse_args(argv)) == cfg, argv


def test_config_argv_names_only_what_differs_from_the_defaults():
    cfg = main.TwoStageConfig(model_name="resnet32", imbalance_type="long_tail", imb_factor=0.02,
                              channels_last=False)
    assert main.config_argv(cfg) == ["--model-name", "resnet32", "--imbalance-type", "long_tail",
                                     "--imb-factor", "0.02", "--no-channels-last"]


@pytest.mark.parametrize("tool", ["bench.py", "precision_check.py", "neutrality_check.py"])
def test_tools_help_is_plain_text(tool):
    """Each tool's --help: its purpose and options, without the docstrings' reST markup."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "tools" / tool), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "usage:" in out.stdout
    for markup in ("``", ":func:", ":class:", "**"):
        assert markup not in out.stdout, (tool, markup)


def test_plain_text_drops_rest_markup():
    assert cli.plain_text("Run ``x`` with :func:`train_eval.evaluate` **now**::") == \
        "Run x with train_eval.evaluate now:"


def test_one_line_warnings_prints_the_message_alone(monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    cli.one_line_warnings()
    assert warnings.formatwarning("pass --precision fp32", UserWarning, "/x/train_eval.py", 12) == \
        "warning: pass --precision fp32\n"
