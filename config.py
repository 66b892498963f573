"""The settings of one run: the dataclass, what each setting accepts, and the run's identity.

:class:`TwoStageConfig` holds every setting with its default, its ``--help`` text and its group
(``opt``); :func:`validate_config` checks them all before any work starts. A run's identity is
:func:`config_hash` (its settings), :func:`stage1_hash` (what its stage 1 depends on: runs with the
same one share a stage-1 checkpoint) and the code fingerprint of the modules that compute its
numbers (:func:`results_logger.code_fingerprint`): a result made by other code is never reused as
if it were current (:func:`made_by_other_code`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import data_loader
import live_curves
import losses
from methods import LOSS_SETTINGS, METHODS
from model import MODELS, NORMED_INITS
from results_logger import code_fingerprint
from train_eval import PRECISIONS, resolve_device

STAGE2_LOSS_TYPES = ("focal", "ce", "logit_adjust")
SCHEDULES = ("cosine", "step")
STAGE2_SCHEDULES = ("inherit", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

# The groups of main.py's --help; every field names its group next to it (``opt``).
CONFIG_GROUPS = {"original": "the original scripts' settings", "method": "method", "schedule": "schedule",
                 "data": "data", "runtime": "runtime"}
REQUIRED = dataclasses.MISSING


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_number(v) -> bool:
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def is_choice(v, choices) -> bool:
    """``v in choices`` for a string only: a list or array would raise TypeError or an
    ambiguous-truth ValueError that names no parameter."""
    return isinstance(v, str) and v in choices


@dataclass(frozen=True)
class Rule:
    """What a setting accepts: ``test(value)``, and the words that say so in the error (a
    function for a registry that may grow after import, e.g. a method registered at run time)."""
    test: Callable[[Any], bool]
    accepted: str | Callable[[], str]

    def words(self) -> str:
        return self.accepted() if callable(self.accepted) else self.accepted

    def or_none(self) -> "Rule":
        return Rule(lambda v: v is None or self.test(v), lambda: "None or " + self.words())


def one_of(registry) -> Rule:
    """A name of ``registry``, looked up when checked (a dict registry can grow after import)."""
    return Rule(lambda v: is_choice(v, registry), lambda: ", ".join(registry))


def number_in(lo: float, hi: float, hi_open: bool = False, lo_open: bool = False) -> Rule:
    def test(v):
        return is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    return Rule(test, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


INT_AT_LEAST_0 = Rule(lambda v: is_int(v) and v >= 0, "an integer >= 0")
INT_AT_LEAST_1 = Rule(lambda v: is_int(v) and v > 0, "an integer > 0")
POSITIVE = Rule(lambda v: is_number(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = Rule(lambda v: is_number(v) and v >= 0, "a finite number >= 0")
FRACTION = number_in(0, 1, hi_open=True)  # [0, 1): momentum, EMA, beta
GAMMA = number_in(0, 5)
BOOL = Rule(lambda v: isinstance(v, bool), "True or False")
PATH = Rule(lambda v: isinstance(v, (str, os.PathLike)) and str(v) != "", "a folder path")
NAME = Rule(lambda v: isinstance(v, str) and v != "" and all(c.isalnum() or c in "-_.=" for c in v),
            "a non-empty name of letters, digits and - _ . =")
MODEL_NAME = Rule(lambda v: isinstance(v, str) and v.lower() in MODELS, ", ".join(MODELS))
SEED = Rule(lambda v: is_int(v) and 0 <= v < 2 ** 31, "an integer in [0, 2**31)")
JPEG_QUALITY = Rule(lambda v: is_int(v) and 1 <= v <= 95, "an integer in [1, 95]")  # Pillow: above 95 is not useful
DEVICE = Rule(lambda v: isinstance(v, str), "auto, cpu or cuda[:N]")  # resolve_device says more
THREADS = Rule(lambda v: is_int(v) and 1 <= v <= 1024, "an integer in [1, 1024]")  # torch overflows past 2**31
STRING = Rule(lambda v: isinstance(v, str), "a string")
MILESTONES = Rule(lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(is_number(m) and m >= 0 for m in v)
                  and v[0] <= v[1], "two increasing epochs >= 0")


def opt(default, help: str, group: str, choices: tuple | None = None, *, identity: bool = True,
        stage2_only: bool = False, label: bool = False, rule: Rule | None = None):
    """A config field with its ``--help`` text and group; ``choices``, for a name, are the keys of
    the registry it is looked up in (``--help`` lists them, argparse enforces them).

    What the field is part of, declared here so that a new field is safe by default:
    ``identity=False``: changes neither the numbers nor the run's identity (``config_hash``);
    ``stage2_only=True``: read only by stage 2, so not part of stage 1's identity (``stage1_hash``);
    ``label=True``: a name that changes no number (not part of stage 1's identity either).

    What it accepts, :func:`validate_config` checks: ``rule``, else the ``choices``; a bool field
    accepts True or False (from its annotation)."""
    if group not in CONFIG_GROUPS:
        raise ValueError(f"group={group!r}; valid: {', '.join(CONFIG_GROUPS)}")
    if rule is None and choices is not None:
        rule = one_of(choices)
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "rule": rule,
                                            "identity": identity, "stage2_only": stage2_only, "label": label})


@dataclass
class TwoStageConfig:
    """Every setting of one run. The first 17 are the original scripts' names and defaults, but for
    ``log_dir``: "results", where the original scripts wrote into the current folder."""
    model_name: str = opt(REQUIRED, "model", "original", tuple(MODELS), rule=MODEL_NAME)
    imbalance_type: str = opt(REQUIRED, "scenario", "original", data_loader.IMBALANCE_TYPES)
    stage1_epochs: int = opt(20, "epochs of stage 1 (cross-entropy from scratch for decoupled methods)", "original",
                             rule=INT_AT_LEAST_0)
    stage2_epochs: int = opt(20, "epochs of stage 2 (fine-tuning from stage 1)", "original", stage2_only=True,
                             rule=INT_AT_LEAST_0)
    imb_factor: float = opt(0.01, "smallest / largest class count, in (0, 1]", "original",
                            rule=number_in(0, 1, lo_open=True))
    batch_size: int = opt(128, "training images per step", "original", rule=INT_AT_LEAST_1)
    log_dir: str = opt("results", "folder for the CSV, JSON, model, checkpoints and the shared stage-1 cache",
                       "runtime", identity=False, rule=PATH)
    stage1_lr: float = opt(0.1, "stage-1 learning rate (SGD, per batch of batch_size)", "original", rule=POSITIVE)
    stage2_lr: float = opt(0.01, "stage-2 learning rate", "original", stage2_only=True, rule=POSITIVE)
    min_weight: float = opt(1.0, "smallest dynamic class weight (> 0)", "original", stage2_only=True, rule=POSITIVE)
    max_weight: float = opt(8.0, "largest dynamic class weight (>= min_weight)", "original", stage2_only=True,
                            rule=POSITIVE)
    ema_alpha: float = opt(0.8, "EMA of the per-class statistic: s = a*s_prev + (1-a)*x, a in [0, 1)", "original",
                           stage2_only=True, rule=FRACTION)
    stage2_loss_type: str = opt("focal", "stage-2 loss of two_stage_ictta: focal, ce, or logit_adjust "
                                         "(CE of z + la_tau * log prior)", "original", STAGE2_LOSS_TYPES,
                                stage2_only=True)
    stage2_focal_gamma: float = opt(1.5, "focal gamma of two_stage_ictta's stage 2, in [0, 5]", "original",
                                    stage2_only=True, rule=GAMMA)
    dynamic_mode: str = opt("loss", "per-class statistic of the dynamic weights (none: uniform weights)", "original",
                            losses.DYNAMIC_MODES, stage2_only=True)
    exp_name: str | None = opt(None, "file-name prefix of the run (default: the method's name)", "original",
                               label=True, rule=NAME.or_none())
    # --- beyond the original scripts
    method: str = opt("two_stage_ictta", "method", "method", tuple(METHODS), rule=one_of(METHODS))
    seed: int = opt(0, "seed of the subset, validation split, init and batch order", "data", rule=SEED)
    device: str = opt("auto", "auto (cuda if available), cpu, cuda or cuda:N", "runtime", rule=DEVICE)
    dataset: str = opt(data_loader.DEFAULT_DATASET, "dataset: picks the default data_root and what is downloaded",
                       "data", tuple(data_loader.DATASETS))
    data_root: str | None = opt(None, "dataset folder (default: $CIFAR10_ROOT, else data/cifar10; for cifar100 "
                                      "$CIFAR100_ROOT, else data/cifar100)", "data", identity=False,
                                rule=Rule(lambda v: isinstance(v, (str, os.PathLike)), "a folder path").or_none())
    download: bool | None = opt(None, "download the dataset into data_root when it is not there (unset: only "
                                      "this project's data/<dataset> downloads without asking; --no-download: "
                                      "never)", "data", identity=False, rule=BOOL.or_none())
    val_per_class: int = opt(100, "balanced validation images per class, held out of train first", "data",
                             rule=INT_AT_LEAST_0)
    stat_per_class: int = opt(50, "balanced images per class held out (after validation) for the "
                                  "val_loss / val_error statistic; disjoint from train, validation, test", "data",
                                  rule=INT_AT_LEAST_0)
    n_max: int | None = opt(None, "images of the largest class (default: all left after validation)", "data",
                            rule=INT_AT_LEAST_1.or_none())
    jpeg_quality: int | None = opt(None, "re-encode every image the run uses (train, validation, test) as JPEG "
                                         "at this quality, 1 to 95, before use: what lossy storage costs "
                                         "(default: the images as stored)", "data",
                                   rule=JPEG_QUALITY.or_none())
    momentum: float = opt(0.9, "SGD momentum", "schedule", rule=FRACTION)
    weight_decay: float = opt(2e-4, "SGD weight decay", "schedule", rule=NON_NEGATIVE)
    warmup_epochs: float = opt(1.0, "linear learning-rate warm-up at the start of stage 1, in epochs", "schedule",
                               rule=NON_NEGATIVE)
    schedule: str = opt("cosine", "cosine (each stage decays to 0) or step (x lr_decay, then x lr_decay^2, at "
                                  "lr_milestones)",
                        "schedule", SCHEDULES)
    lr_milestones: tuple = opt((160, 180), "global epochs of the step schedule's two decays", "schedule",
                               rule=MILESTONES)
    lr_decay: float = opt(0.01, "the step schedule's factor at its first milestone (its square at the second): "
                                "0.01 as LDAM-DRW, 0.1 as MiSLAS's stage 1", "schedule",
                          rule=number_in(0, 1, lo_open=True))
    focal_gamma: float = opt(1.0, "gamma of the focal and cb_focal methods, in [0, 5]", "method", rule=GAMMA)
    cb_beta: float = opt(0.9999, "effective-number beta (cb_focal, drw, ldam_drw), in [0, 1)", "method",
                         rule=FRACTION)
    ldam_max_margin: float = opt(0.5, "largest LDAM margin", "method", rule=NON_NEGATIVE)
    ldam_scale: float = opt(30.0, "LDAM logit scale s", "method", rule=POSITIVE)
    prior_blend: float = opt(0.0, "dynamic weights: share of a count prior (inverse frequency) blended "
                                  "into the statistic, in [0, 1] (losses.DynamicClassWeights)", "method",
                               stage2_only=True, rule=number_in(0, 1))
    weight_map: str = opt("minmax", "dynamic weights' map: minmax (the statistic's range onto [min_weight, "
                                    "max_weight]) or power (w ~ (s/mean s)^map_power, mean 1 over the training "
                                    "images, clipped to [min_weight, max_weight]; losses.DynamicClassWeights)",
                          "method", losses.WEIGHT_MAPS, stage2_only=True)
    map_power: float = opt(1.0, "the power map's exponent (0: uniform weights)", "method", stage2_only=True,
                           rule=NON_NEGATIVE)
    stage2_schedule: str = opt("inherit", "stage-2 learning rate: inherit (the run's schedule goes on) or "
                                          "cosine (restart at stage2_lr, cosine to 0 over stage 2)", "schedule",
                               STAGE2_SCHEDULES, stage2_only=True)
    normed_init: str = opt("unit", "init of LDAM's cosine classifier: unit (rows of norm 1, the "
                                   "reference) or uniform (raw U(-1, 1) rows, this project's earlier init)",
                           "method", NORMED_INITS)
    la_tau: float = opt(1.0, "logit-adjustment tau", "method", rule=NON_NEGATIVE)
    mixup_alpha: float = opt(0.0, "mixup in stage 1, any method: lam ~ Beta(alpha, alpha) per batch (MiSLAS "
                                  "uses 1); 0: off", "method", rule=NON_NEGATIVE)
    sam_rho: float = opt(0.0, "sharpness-aware minimisation in both stages, any method: the ascent radius "
                              "(Saddle-LongTail: 0.5 with drw, 0.8 with ldam_drw); two forward-backward "
                              "passes per step; 0: off", "method", rule=NON_NEGATIVE)
    precision: str = opt("bf16", "bf16 (autocast) or fp32", "runtime", PRECISIONS)
    channels_last: bool = opt(True, "channels-last memory format (faster convolutions)", "runtime")
    compile: bool = opt(False, "torch.compile the training forward pass", "runtime")
    compile_mode: str = opt("default", "torch.compile mode (reduce-overhead: CUDA graphs)", "runtime",
                            COMPILE_MODES)
    eval_every: int = opt(1, "epochs between evaluations (each stage's last epoch always is)", "runtime",
                          rule=INT_AT_LEAST_1)
    eval_batch_size: int = opt(512, "images per evaluation batch", "runtime", identity=False, rule=INT_AT_LEAST_1)
    threads: int | None = opt(None, "CPU threads (default: torch's, one per core)", "runtime", identity=False,
                              rule=THREADS.or_none())
    quiet: bool = opt(False, "no progress bar", "runtime", identity=False)
    tensorboard: bool = opt(False, "also write each evaluated epoch's losses, metrics and class weights for "
                                   "TensorBoard, to <log_dir>/tensorboard/<run name>/ (optional package: "
                                   "pip install tensorboard)", "runtime", identity=False)
    resume: bool = opt(True, "resume from the last checkpoint; return a finished run's results", "runtime",
                       identity=False)
    reuse_stage1: bool = opt(True, "share stage 1 with other runs in log_dir", "runtime", identity=False)
    accept_code_change: bool = opt(False, "keep (resume, skip, share) results made by other code; only "
                                          "for a change shown numerically neutral (tools/neutrality_check.py)", "runtime",
                                  identity=False)
    tag: str = opt("", "free label copied into every row (the grid writes <part>-<folder>)", "runtime",
                   label=True, rule=STRING)


# settings that change neither the numbers nor the run's identity (``identity=False`` at the field)
NOT_IDENTITY = tuple(f.name for f in dataclasses.fields(TwoStageConfig) if not f.metadata["identity"])
CSV_NAMES = {"model_name": "model", "imbalance_type": "scenario"}  # the CSV's names of two settings


def csv_value(value):
    """A setting as a CSV cell holds it (a tuple or list as its text)."""
    return str(value) if isinstance(value, (tuple, list)) else value


def identity_defaults() -> dict:
    """The default of every identity setting that has one, by its CSV name and as a CSV cell holds
    it: what a run's JSON records so that an analysis without this code can tell a default apart."""
    return {CSV_NAMES.get(f.name, f.name): csv_value(f.default) for f in dataclasses.fields(TwoStageConfig)
            if f.metadata["identity"] and f.default is not dataclasses.MISSING and f.name != "tag"}


def check_setting(cond: bool, name: str, value, accepted: str) -> None:
    """Raise ``ValueError("<name>=<value> is invalid; accepted: <accepted>")`` unless ``cond``."""
    if not cond:
        raise ValueError(f"{name}={value!r} is invalid; accepted: {accepted}")


def validate_config(cfg: TwoStageConfig) -> None:
    """Raise ``ValueError`` naming the first invalid setting and what it accepts: each field by the
    rule declared beside it (``opt``), then the rules that tie settings together. Writes nothing."""
    for f in dataclasses.fields(TwoStageConfig):
        rule = f.metadata["rule"] or (BOOL if f.type == "bool" else None)
        if rule is not None:
            value = getattr(cfg, f.name)
            check_setting(rule.test(value), f.name, value, rule.words())
    check_setting(cfg.stage1_epochs + cfg.stage2_epochs > 0, "stage1_epochs", cfg.stage1_epochs,
                  "stage1_epochs + stage2_epochs >= 1")
    check_setting(cfg.min_weight <= cfg.max_weight, "min_weight", cfg.min_weight,
                  f"a number <= max_weight ({cfg.max_weight!r})")
    check_setting(not cfg.tensorboard or live_curves.available(), "tensorboard", cfg.tensorboard,
                  "False, or True once the optional tensorboard package is installed (pip install tensorboard)")
    resolve_device(cfg.device)
    needs_stat = METHODS[cfg.method].weights2 == "dynamic" and cfg.dynamic_mode in ("val_loss", "val_error")
    check_setting(not needs_stat or cfg.stat_per_class > 0, "stat_per_class", cfg.stat_per_class,
                  f"> 0 for dynamic_mode={cfg.dynamic_mode!r} (its statistic comes from that split)")
    check_setting(not METHODS[cfg.method].needs_val or cfg.val_per_class > 0, "val_per_class",
                  cfg.val_per_class, f"> 0 for method={cfg.method!r} (it chooses on the validation split)")
    check_setting(cfg.method != "mislas" or cfg.imb_factor < 1, "imb_factor", cfg.imb_factor,
                  "< 1 for method='mislas' (label-aware smoothing needs unequal class counts)")
    check_setting(cfg.method != "mislas" or cfg.dataset == "cifar10", "dataset", cfg.dataset,
                  "cifar10 for method='mislas' (its CIFAR-10 recipe; MiSLAS's CIFAR-100 one, smoothing 0.4 "
                  "to 0.1 with shifted BatchNorm, is not implemented)")


def config_hash(cfg: TwoStageConfig) -> str:
    """A run's identity: every setting but those declared not to matter (``identity=False``, and
    the ``tag``)."""
    return _identity(cfg, [f for f in dataclasses.fields(cfg) if f.metadata["identity"] and f.name != "tag"])


def stage1_hash(cfg: TwoStageConfig) -> str:
    """Identity of stage 1: every setting but those declared not to matter to it at their field
    (``identity=False``, ``stage2_only``, ``label``) and the loss settings its loss and weights do
    not read (``Method.reads``), the method replaced by its stage-1 loss, weights and classifier,
    the data folder by its resolved path."""
    m = METHODS[cfg.method]
    unread = LOSS_SETTINGS - m.reads(1)
    kept = [f for f in dataclasses.fields(cfg) if f.metadata["identity"] and not f.metadata["stage2_only"]
            and not f.metadata["label"] and f.name != "method" and f.name not in unread]
    return _identity(cfg, kept, loss1=m.loss1, weights1=m.weights1, normed=m.normed_classifier,
                     data=str(data_folder(cfg)))


def settings_changed(recorded: dict, cfg: TwoStageConfig) -> str:
    """``precision 'bf16' there, 'fp32' here``: the settings of a run's identity in which its recorded
    config (``recorded``, from its JSON) differs from ``cfg``; empty when they agree on all it records."""
    mine = dataclasses.asdict(cfg)
    return "; ".join(f"{f.name} {recorded[f.name]!r} there, {mine[f.name]!r} here"
                     for f in dataclasses.fields(cfg) if f.metadata["identity"] and f.name != "tag"
                     and f.name in recorded and _normal(recorded[f.name]) != _normal(mine[f.name]))


def _identity(cfg: TwoStageConfig, fields: list, **facts) -> str:
    """A hash of ``fields``' values where they differ from their defaults, and of ``facts``. A
    default is part of the code, so the code fingerprint guards it; leaving defaults out means a
    new setting whose default keeps the old behaviour leaves earlier identities alone."""
    d = {f.name: getattr(cfg, f.name) for f in fields
         if f.default is dataclasses.MISSING or _normal(getattr(cfg, f.name)) != _normal(f.default)}
    return hashlib.sha1(json.dumps({**d, **facts}, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _normal(value):
    """Tuples and lists compare equal (a JSON round trip turns one into the other)."""
    return list(value) if isinstance(value, (tuple, list)) else value


def stage1_path(cfg: TwoStageConfig) -> Path:
    """The shared stage-1 checkpoint of ``cfg``: the first run in ``log_dir`` with this stage 1
    writes it, the others load it."""
    return Path(cfg.log_dir) / "stage1" / f"stage1_{stage1_hash(cfg)}.pt"


def made_by_other_code(record: dict | None, cfg: TwoStageConfig) -> str | None:
    """Why ``record`` (a run's JSON or a checkpoint) must not be kept: a line naming the two code
    fingerprints, or None when it is current (or ``cfg.accept_code_change`` keeps it)."""
    theirs = (record or {}).get("code_fingerprint")
    if cfg.accept_code_change or theirs == code_fingerprint():
        return None
    return (f"made by other code (fingerprint {theirs} != {code_fingerprint()}); "
            f"accept_code_change (--accept-code-change) keeps it")


def run_name(cfg: TwoStageConfig) -> str:
    """``results_<exp>_<model>_<scenario>_imb<f>_seed<s>``, with ``_<dataset>`` after the model
    for a dataset other than CIFAR-10."""
    exp = cfg.exp_name or cfg.method
    data = "" if cfg.dataset == data_loader.DEFAULT_DATASET else f"_{cfg.dataset}"
    return f"results_{exp}_{cfg.model_name.lower()}{data}_{cfg.imbalance_type}_imb{cfg.imb_factor:g}_seed{cfg.seed}"


def data_folder(cfg: TwoStageConfig) -> Path:
    """The data root ``cfg`` names (its default when unset), resolved."""
    return Path(cfg.data_root or data_loader.default_data_root(cfg.dataset)).resolve()


