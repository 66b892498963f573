"""The settings, fuzzed (config.validate_config and main.py's parsing): bad input everywhere.

Every invalid setting or combination given to ``run_two_stage_ictta_on_scenario`` must raise a
``ValueError`` that names the parameter, and the CLI must exit with code 2 naming it on stderr.
Either way this must happen before any data is loaded and before anything exists in ``log_dir``:
``data_loader.load_dataset`` is replaced by a tripwire, and ``log_dir`` must not even be created.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import config
import methods
import torch
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

import data_loader
import live_curves
import losses
import main as cli
import two_stage_ictta as tsi
from model import MODELS, NORMED_INITS

ROOT = Path(__file__).resolve().parents[1]
# explain phase off: its tracing adds time and, on huge ints, ran out of memory formatting a failure
FUZZ = settings(max_examples=12, deadline=2000, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class ReachedDataLoading(Exception):
    """Raised by the tripwire: a setting got past validation."""


@pytest.fixture(scope="module")
def tripwire(tmp_path_factory):
    """Any data loading fails loudly; yields a folder under which log_dirs must stay absent."""
    def load_dataset(*args, **kwargs):
        raise ReachedDataLoading(f"load_dataset{args}{kwargs} was reached")

    torch.cuda.is_available()  # warm up: its first call can be slow
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_loader, "load_dataset", load_dataset)
        yield tmp_path_factory.mktemp("fuzz")


# ----------------------------------------------------------------------------------------------
# Invalid values, per parameter

# Each parameter has a predicate for what it accepts (its documented contract). Invalid values come
# from a fixed table of edge cases (always all tried) and from hypothesis, filtered through it.

EDGES = [None, True, False, 0, 1, -1, 2, 2 ** 31, 10 ** 400, -10 ** 400, 0.0, -0.0, 0.5, 1.0, 5.0, 5.5,
         -1e-300, 1e300, math.nan, math.inf, -math.inf, "", "x", "loss", "0.5", "cpu", b"x", [], [1, 2], (),
         (1, 2), {}, {"a": 1}, 1 + 2j, np.float64(math.nan), np.int64(-1), np.float32(2.0),
         np.array([1, 2]), np.array(["loss"])]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_finite_num(v) -> bool:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond float range is no usable number
        return False


def int_in(lo=None, hi=None, optional=False):
    return lambda v: (optional and v is None) or (_is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi))


def num_in(lo, hi=None, lo_open=False, hi_open=False):
    def valid(v):
        return (_is_finite_num(v) and (v > lo if lo_open else v >= lo)
                and (hi is None or (v < hi if hi_open else v <= hi)))
    return valid


def one_of(choices, fold_case=False):
    return lambda v: isinstance(v, str) and (v.lower() if fold_case else v) in choices


def is_bool(v) -> bool:
    return isinstance(v, bool)


def path(optional=False):
    return lambda v: (optional and v is None) or (isinstance(v, (str, os.PathLike)) and (optional or str(v) != ""))


def exp_name_ok(v) -> bool:
    return v is None or (isinstance(v, str) and v != "" and all(c.isalnum() or c in "-_.=" for c in v))


def device_ok(v) -> bool:
    if not isinstance(v, str):
        return False
    if re.fullmatch(r"auto|cpu(:\d+)?", v):
        return True
    return bool(re.fullmatch(r"cuda(:\d+)?", v)) and torch.cuda.is_available()


def milestones_ok(v) -> bool:
    return (isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_finite_num(m) and m >= 0 for m in v)
            and v[0] <= v[1])


def _junk():
    return st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.binary(max_size=3),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                     st.floats(), st.integers(), st.complex_numbers(max_magnitude=3))


_ints, _nums = st.integers(-2 ** 40, 2 ** 40), st.floats()
_words = lambda choices: st.one_of(st.text(max_size=10), st.sampled_from([c.upper() + "x" for c in choices] + [c + " " for c in choices]))
_devices = st.sampled_from(["tpu", "gpu", "CPU", "cpu:-1", "cpu ", "", "meta", "mps", "xla", "cuda:x", "cuda:-1",
                            "auto:0", "cuda", "cuda:0"])

# name -> (accepts, strategy that mostly produces what it does not accept)
PARAMS = {
    "model_name": (one_of(MODELS, fold_case=True), _words(list(MODELS))),
    "imbalance_type": (one_of(data_loader.IMBALANCE_TYPES), _words(data_loader.IMBALANCE_TYPES)),
    "stage1_epochs": (int_in(0), _ints),
    "stage2_epochs": (int_in(0), _ints),
    "imb_factor": (num_in(0, 1, lo_open=True), _nums),
    "batch_size": (int_in(1), _ints),
    "log_dir": (path(), st.text(max_size=2)),
    "stage1_lr": (num_in(0, lo_open=True), _nums),
    "stage2_lr": (num_in(0, lo_open=True), _nums),
    "min_weight": (num_in(0, lo_open=True), _nums),
    "max_weight": (num_in(0, lo_open=True), _nums),
    "ema_alpha": (num_in(0, 1, hi_open=True), _nums),
    "prior_blend": (num_in(0, 1), _nums),
    "weight_map": (one_of(losses.WEIGHT_MAPS), _words(losses.WEIGHT_MAPS)),
    "map_power": (num_in(0), _nums),
    "mixup_alpha": (num_in(0), _nums),
    "sam_rho": (num_in(0), _nums),
    "stage2_schedule": (one_of(config.STAGE2_SCHEDULES), _words(config.STAGE2_SCHEDULES)),
    "stage2_loss_type": (one_of(config.STAGE2_LOSS_TYPES), _words(config.STAGE2_LOSS_TYPES)),
    "stage2_focal_gamma": (num_in(0, 5), _nums),
    "dynamic_mode": (one_of(losses.DYNAMIC_MODES), _words(losses.DYNAMIC_MODES)),
    "exp_name": (exp_name_ok, st.text(max_size=6)),
    "method": (one_of(methods.METHODS), _words(list(methods.METHODS))),
    "seed": (int_in(0, 2 ** 31 - 1), st.integers(-2 ** 40, 2 ** 40)),
    "device": (device_ok, _devices),
    "dataset": (one_of(data_loader.DATASETS), _words(list(data_loader.DATASETS))),
    "data_root": (path(optional=True), st.integers()),
    "download": (lambda v: v is None or is_bool(v), _ints),  # None: only data/<dataset> downloads
    "val_per_class": (int_in(0), _ints),
    "stat_per_class": (int_in(0), _ints),
    "n_max": (int_in(1, optional=True), _ints),
    "jpeg_quality": (int_in(1, 95, optional=True), _ints),
    "momentum": (num_in(0, 1, hi_open=True), _nums),
    "weight_decay": (num_in(0), _nums),
    "warmup_epochs": (num_in(0), _nums),
    "schedule": (one_of(config.SCHEDULES), _words(config.SCHEDULES)),
    "lr_milestones": (milestones_ok, st.one_of(st.tuples(_ints, _ints), st.lists(_nums, max_size=3),
                                               st.tuples(st.booleans(), st.integers(0, 3)))),
    "lr_decay": (num_in(0, 1, lo_open=True), _nums),
    "focal_gamma": (num_in(0, 5), _nums),
    "cb_beta": (num_in(0, 1, hi_open=True), _nums),
    "ldam_max_margin": (num_in(0), _nums),
    "ldam_scale": (num_in(0, lo_open=True), _nums),
    "normed_init": (one_of(NORMED_INITS), _words(NORMED_INITS)),
    "la_tau": (num_in(0), _nums),
    "precision": (one_of(("bf16", "fp32")), _words(("bf16", "fp32"))),
    "compile_mode": (one_of(config.COMPILE_MODES), _words(config.COMPILE_MODES)),
    "channels_last": (is_bool, _ints),
    "compile": (is_bool, _ints),
    "eval_every": (int_in(1), _ints),
    "eval_batch_size": (int_in(1), _ints),
    "threads": (int_in(1, 1024, optional=True), _ints),
    "quiet": (is_bool, _ints),
    "resume": (is_bool, _ints),
    "reuse_stage1": (is_bool, _ints),
    "accept_code_change": (is_bool, _ints),
    "tag": (lambda v: isinstance(v, str), _junk()),
    "tensorboard": (lambda v: v is False or (v is True and live_curves.available()), _ints),
}


def test_every_setting_is_fuzzed():
    fields = {f.name for f in dataclasses.fields(config.TwoStageConfig)}
    assert fields == set(PARAMS), f"update PARAMS: {fields ^ set(PARAMS)}"


BASE = {"model_name": "resnet10", "imbalance_type": "long_tail", "stage1_epochs": 1, "stage2_epochs": 1,
        "batch_size": 32, "device": "cpu", "quiet": True}


def _base(draw) -> dict:
    """A valid setting (apart from what the caller overrides), varied a little."""
    return {**BASE, "model_name": draw(st.sampled_from(["simplecnn", "resnet10", "ResNet20"])),
            "imbalance_type": draw(st.sampled_from(data_loader.IMBALANCE_TYPES)),
            "stage1_epochs": draw(st.integers(0, 3)), "stage2_epochs": draw(st.integers(1, 3))}


@st.composite
def invalid_combination(draw):
    """(settings, names): values valid one by one, invalid together; ``names`` are the parameters
    the error may name."""
    kw = _base(draw)
    kind = draw(st.sampled_from(["weights", "epochs", "needs_val"]))
    if kind == "weights":
        lo = draw(st.floats(1e-3, 1e3))
        kw.update(min_weight=lo * draw(st.floats(1.01, 10)), max_weight=lo)
        return kw, ("min_weight", "max_weight")
    if kind == "epochs":
        kw.update(stage1_epochs=0, stage2_epochs=0)
        return kw, ("stage1_epochs", "stage2_epochs")
    if draw(st.booleans()):  # tau-norm selects tau on validation: it needs that split
        kw.update(method="tau_norm", val_per_class=0)
        return kw, ("val_per_class",)
    # the held-out statistics need the statistic split
    kw.update(method="two_stage_ictta", dynamic_mode=draw(st.sampled_from(["val_loss", "val_error"])),
              stat_per_class=0)
    return kw, ("stat_per_class",)


def _log_dir(base: Path, kw: dict) -> Path:
    return base / f"runs_{abs(hash(repr(sorted(kw.items(), key=lambda kv: kv[0])))) % 10 ** 9}"


def _check_api_rejects(base: Path, kw: dict, names) -> None:
    log_dir = _log_dir(base, kw)
    kw.setdefault("log_dir", str(log_dir))
    kw.setdefault("data_root", str(base / "no_data_here"))
    model_name, imbalance_type = kw.pop("model_name"), kw.pop("imbalance_type")
    with pytest.raises(ValueError) as info:
        tsi.run_two_stage_ictta_on_scenario(model_name, imbalance_type, **kw)
    msg = str(info.value)
    assert any(n in msg for n in names), f"{msg!r} names none of {names}"
    assert not log_dir.exists(), f"an invalid setting created {log_dir}"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_api_rejects_invalid_value_before_any_work(tripwire, name):
    accepts, strategy = PARAMS[name]
    for value in EDGES:  # the classic offenders, every time
        if not accepts(value):
            _check_api_rejects(tripwire, {**BASE, name: value}, (name,))

    @FUZZ
    @given(st.data())
    def check(data):
        value = data.draw(st.one_of(strategy, _junk()).filter(lambda v: not accepts(v)), label=name)
        _check_api_rejects(tripwire, {**_base(data.draw), name: value}, (name,))

    check()


@FUZZ
@given(invalid_combination())
def test_api_rejects_invalid_combination_before_any_work(tripwire, case):
    kw, names = case
    _check_api_rejects(tripwire, kw, names)


def test_api_unknown_keyword_is_a_type_error_naming_it(tripwire):
    with pytest.raises(TypeError, match="stage1_epoch"):
        tsi.run_two_stage_ictta_on_scenario("resnet10", "long_tail", stage1_epoch=3,
                                            log_dir=str(tripwire / "unknown_kw"))
    assert not (tripwire / "unknown_kw").exists()


# ----------------------------------------------------------------------------------------------
# The CLI

_INT_FLAGS = {"stage1-epochs": 0, "stage2-epochs": 0, "batch-size": 1, "val-per-class": 0, "eval-every": 1,
              "eval-batch-size": 1, "seed": 0, "n-max": 1, "threads": 1}
# (lo, lo_open, hi, hi_open); hi None: unbounded
_FLOAT_FLAGS = {"imb-factor": (0, True, 1, False), "stage1-lr": (0, True, None, False),
                "stage2-lr": (0, True, None, False), "min-weight": (0, True, None, False),
                "max-weight": (0, True, None, False), "ema-alpha": (0, False, 1, True),
                "stage2-focal-gamma": (0, False, 5, False), "focal-gamma": (0, False, 5, False),
                "cb-beta": (0, False, 1, True), "momentum": (0, False, 1, True),
                "weight-decay": (0, False, None, False), "warmup-epochs": (0, False, None, False),
                "ldam-max-margin": (0, False, None, False), "ldam-scale": (0, True, None, False),
                "la-tau": (0, False, None, False)}
_CHOICE_FLAGS = {"model-name": tuple(MODELS), "imbalance-type": data_loader.IMBALANCE_TYPES,
                 "method": tuple(methods.METHODS), "stage2-loss-type": config.STAGE2_LOSS_TYPES,
                 "dynamic-mode": losses.DYNAMIC_MODES, "schedule": config.SCHEDULES, "precision": ("bf16", "fp32"),
                 "compile-mode": config.COMPILE_MODES, "dataset": tuple(data_loader.DATASETS)}
_BOOL_FLAGS = ("channels-last", "compile", "quiet", "resume", "reuse-stage1", "download", "tensorboard")


@st.composite
def invalid_argv(draw):
    """(extra argv, names): one invalid option, or one invalid combination of valid options."""
    kind = draw(st.sampled_from(["int", "float", "choice", "bool", "misc", "combo"]))
    if kind == "int":
        flag, lo = draw(st.sampled_from(sorted(_INT_FLAGS.items())))
        value = draw(st.one_of(st.integers(max_value=lo - 1).map(str),
                               st.sampled_from(["abc", "1.5", "nan", "", "1e3", "0x10", "--"]),
                               st.integers(min_value=2 ** 31).map(str) if flag in ("seed", "threads") else st.nothing()))
        return [f"--{flag}", value], (flag,)
    if kind == "float":
        flag, (lo, lo_open, hi, hi_open) = draw(st.sampled_from(sorted(_FLOAT_FLAGS.items())))
        outside = lambda x: (x <= lo if lo_open else x < lo) or (hi is not None and (x >= hi if hi_open else x > hi))
        value = draw(st.one_of(st.sampled_from(["nan", "inf", "-inf", "abc", "", "1e999", "-1e999"]),
                               st.floats(allow_nan=False, allow_infinity=False).filter(outside).map(repr),
                               st.floats(max_value=lo, allow_nan=False).filter(outside).map(repr),
                               st.floats(min_value=hi or 0, allow_nan=False).filter(outside).map(repr)))
        return [f"--{flag}", value], (flag,)
    if kind == "choice":
        flag, choices = draw(st.sampled_from(sorted(_CHOICE_FLAGS.items())))
        value = draw(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10).filter(
            lambda v: v.lower() not in choices and v not in choices))
        return [f"--{flag}", value], (flag,)
    if kind == "bool":
        flag = draw(st.sampled_from(_BOOL_FLAGS))
        return [f"--{flag}=" + draw(st.sampled_from(["yes", "0", "maybe"]))], (flag,)
    if kind == "misc":
        return draw(st.sampled_from([
            (["--lr-milestones", "5", "3"], ("lr-milestones", "lr_milestones")),
            (["--lr-milestones", "-1", "3"], ("lr-milestones", "lr_milestones")),
            (["--lr-milestones", "5"], ("lr-milestones",)),
            (["--lr-milestones", "a", "b"], ("lr-milestones",)),
            (["--exp-name", ""], ("exp-name", "exp_name")),
            (["--exp-name", "a/b"], ("exp-name", "exp_name")),
            (["--exp-name", "a b"], ("exp-name", "exp_name")),
            (["--log-dir", ""], ("log-dir", "log_dir")),
            (["--device", "tpu"], ("device",)),
            (["--device", "cuda:x"], ("device",)),
            (["--no-such-option", "3"], ("--no-such-option",)),
            (["--stage1-epochs"], ("stage1-epochs",)),
            (["--tag"], ("tag",)),
        ]))
    return draw(st.sampled_from([
        (["--min-weight", "9", "--max-weight", "8"], ("min-weight", "min_weight", "max_weight")),
        (["--stage1-epochs", "0", "--stage2-epochs", "0"], ("stage1-epochs", "stage1_epochs")),
        (["--method", "tau_norm", "--val-per-class", "0"], ("val-per-class", "val_per_class")),
        (["--dynamic-mode", "val_error", "--val-per-class", "0"], ("val-per-class", "val_per_class")),
    ]))


@FUZZ
@given(invalid_argv())
def test_cli_exits_2_naming_the_option(tripwire, case):
    extra, names = case
    log_dir = tripwire / f"cli_{abs(hash(tuple(extra))) % 10 ** 9}"
    argv = ["--model-name", "resnet10", "--imbalance-type", "long_tail", "--device", "cpu", "--quiet",
            "--log-dir", str(log_dir), "--data-root", str(tripwire / "no_data_here"), *extra]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
    stderr = err.getvalue()
    assert info.value.code == 2, stderr
    names = {n for name in names for n in (name, name.replace("-", "_"))}
    assert any(n in stderr for n in names), f"{stderr!r} names none of {names}"
    assert "Traceback" not in stderr
    assert not log_dir.exists()


def test_cli_subprocess_invalid_value(tmp_path):
    """End to end: a real process, a usage error, no traceback, nothing written."""
    log_dir = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "main.py", "--model-name", "resnet10", "--imbalance-type",
                           "long_tail", "--device", "cpu", "--quiet", "--log-dir", str(log_dir),
                           "--data-root", str(tmp_path / "none"), "--stage1-lr", "nan"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "stage1_lr" in proc.stderr and "Traceback" not in proc.stderr
    assert not log_dir.exists()


def test_settings_changed_names_each_differing_setting_of_the_identity():
    cfg = config.TwoStageConfig(model_name="resnet32", imbalance_type="long_tail", precision="bf16")
    recorded = {**dataclasses.asdict(cfg), "precision": "fp32", "stage2_lr": 0.02, "tag": "other label"}
    recorded["lr_milestones"] = list(cfg.lr_milestones)  # a JSON round trip makes the tuple a list
    del recorded["max_weight"]  # a setting the recording code did not have yet
    assert config.settings_changed(recorded, cfg) == "stage2_lr 0.02 there, 0.01 here; precision 'fp32' there, 'bf16' here"
    assert config.settings_changed(dataclasses.asdict(cfg), cfg) == ""
