"""Two-stage training with dynamic class reweighting, and the methods it is compared with.

Every method is two stages over one model, one data stream and one learning-rate schedule:

* **Stage 1** (``stage1_epochs``) trains from scratch with the method's stage-1 loss: plain
  cross-entropy for the decoupled methods (Kang et al. 2020), including ours.
* **Stage 2** (``stage2_epochs``) continues from the stage-1 weights and optimizer with the method's
  stage-2 loss and class weights. For ``two_stage_ictta`` these weights come from
  :class:`losses.DynamicClassWeights`: a per-class statistic (``dynamic_mode``), smoothed over epochs
  with an EMA (``ema_alpha``) and mapped into ``[min_weight, max_weight]``, recomputed every epoch.

Methods whose stage 1 is the same (same loss, model, data, seed and stage-1 settings) share it: it is
trained once per ``log_dir`` and its checkpoint reused (``stage1_id`` in every row says which).

``run_two_stage_ictta_on_scenario(model_name, imbalance_type, **settings)`` runs one configuration
(:class:`TwoStageConfig` lists every setting with its default) and returns a dict of results. It
writes, in ``log_dir``: ``results_<exp>_<model>_<scenario>_imb<f>_seed<s>.csv`` (one row per epoch
and split), ``.json`` beside it (the config, the git commit, the status and the results) and, once
finished, ``.model.pt`` (the final weights and what rebuilds and evaluates them, see
:mod:`saved_model`). It
checkpoints every epoch and resumes from the last finished epoch when rerun; a finished run is
returned from its JSON without retraining.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import cli
import data_loader
import live_curves
import losses
import runfiles
import saved_model
from model import MODELS, NORMED_INITS, get_model
from results_logger import (RunLogger, atomic_torch_save, git_commit, now, read_json, summarize_rows,
                            write_json)
from runfiles import RunLock
from train_eval import (PRECISIONS, NonFiniteError, evaluate, predict, resolve_device,
                        train_one_epoch)


# ----------------------------------------------------------------------------------------------
# Methods

def evaluate_splits(run: Run, stage: int) -> dict:
    """Metrics on val (if any) and test: every method's evaluation, but tau-norm's in stage 2."""
    ev = partial(evaluate, run.model, normalizer=run.data.norm, train_counts=run.data.counts,
                 batch_size=run.cfg.eval_batch_size, precision=run.cfg.precision,
                 channels_last=run.cfg.channels_last)
    out = {"test": ev(*run.data.test)}
    if len(run.data.val[1]):
        out["val"] = ev(*run.data.val)
    return out


def evaluate_tau_norm(run: Run, stage: int) -> dict:
    """tau-norm: stage 2 evaluates the tau-normalised classifier, tau chosen on val, then reports test."""
    if stage == 1:
        return evaluate_splits(run, stage)
    return _evaluate_tau_norm(run.model, run.data.norm, run.data.counts, run.cfg, run.data.val, run.data.test)


def keep_classifier(run: Run, fresh: bool) -> None:
    """Stage 2 goes on with the stage-1 model, optimizer and batches: every method but cRT."""


def retrain_classifier(run: Run, fresh: bool) -> None:
    """cRT's stage 2: freeze the backbone, a new classifier (re-initialised when ``fresh``, i.e. not
    resumed from a stage-2 checkpoint) with its own optimizer, and class-balanced batches drawn from
    the same generator, so the stream goes on."""
    _freeze_for_crt(run.model, reinit_seed=run.cfg.seed + 1 if fresh else None)
    run.optimizer = run.make_optimizer(run.model.fc.parameters())
    run.batches = data_loader.DeviceBatches(*run.data.train, run.cfg.batch_size, run.data.norm, run.generator,
                                            sampler="class_balanced", channels_last=run.cfg.channels_last)


@dataclass(frozen=True)
class Method:
    """What a method does in each stage: loss and class weights (``none``, ``inverse`` frequency,
    ``effective`` number, or ``dynamic``), and its stage-specific hooks."""
    loss1: str
    weights1: str
    loss2: str
    weights2: str
    doc: str
    normed_classifier: bool = False  # cosine classifier (LDAM)
    normalization: str = "mean"  # a weighted loss's denominator: "mean" sum(w_y), "batch_mean" N
    # how stage 2 starts (and resumes): (run, fresh) -> None, may replace run.optimizer / run.batches
    enter_stage2: Callable[[Run, bool], None] = keep_classifier
    evaluate: Callable[[Run, int], dict] = evaluate_splits  # (run, stage) -> {"test": ..., "val": ...}
    stage2_cosine: bool = False  # stage 2 always restarts a cosine schedule (cRT's new classifier)

    def loss(self, stage: int) -> str:
        return self.loss1 if stage == 1 else self.loss2

    def weights(self, stage: int) -> str:
        return self.weights1 if stage == 1 else self.weights2


METHODS = {
    "ce": Method("ce", "none", "ce", "none",
                 "Cross-entropy for the whole budget (ERM). It shares stage 1 with the two-stage "
                 "methods, so it is also their same-budget control."),
    "focal": Method("focal", "none", "focal", "none", "Focal loss (Lin et al. 2017), gamma=focal_gamma."),
    "rw": Method("ce", "inverse", "ce", "inverse", "Cross-entropy re-weighted by inverse class frequency."),
    "cb_focal": Method("focal", "effective", "focal", "effective",
                       "Class-balanced focal loss (Cui et al. 2019): effective-number weights, beta=cb_beta, "
                       "the weighted sum divided by the batch size as in the reference (softmax focal, "
                       "where the reference uses a sigmoid one).",
                       normalization="batch_mean"),
    "drw": Method("ce", "none", "ce", "effective",
                  "Deferred re-weighting (Cao et al. 2019): CE, then effective-number weights in stage 2."),
    "ldam_drw": Method("ldam", "none", "ldam", "effective",
                       "LDAM-DRW (Cao et al. 2019): margins ~ n^-1/4 (max ldam_max_margin), scale "
                       "ldam_scale, cosine classifier, effective-number weights in stage 2.",
                       normed_classifier=True),
    "logit_adjust": Method("logit_adjust", "none", "logit_adjust", "none",
                           "Logit-adjusted loss (Menon et al. 2021), tau=la_tau."),
    "balanced_softmax": Method("balanced_softmax", "none", "balanced_softmax", "none",
                               "Balanced Softmax (Ren et al. 2020): CE on z + log n_c."),
    "crt": Method("ce", "none", "ce", "none",
                  "Classifier re-training (Kang et al. 2020): stage 2 re-initialises the classifier and "
                  "trains only it, on the frozen backbone, with class-balanced sampling; the backbone's "
                  "BatchNorm statistics follow those batches (train mode, as the reference).",
                  enter_stage2=retrain_classifier, stage2_cosine=True),
    "tau_norm": Method("ce", "none", "ce", "none",
                       "tau-normalisation (Kang et al. 2020): the CE model's classifier rows scaled by "
                       "1/||w_c||^tau and its bias dropped (as the reference), tau in {0, 0.1, ..., 2} "
                       "chosen on validation macro-F1.",
                       evaluate=evaluate_tau_norm),
    "two_stage_ictta": Method("ce", "none", "ictta", "dynamic",
                              "Ours: CE, then focal (or CE) with dynamic per-class weights."),
}
TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))
STAGE2_LOSS_TYPES = ("focal", "ce")
SCHEDULES = ("cosine", "step")
STAGE2_SCHEDULES = ("inherit", "cosine")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


# ----------------------------------------------------------------------------------------------
# Config

# The groups of main.py's --help; every field names its group next to it (``opt``).
CONFIG_GROUPS = {"seed": "the seed project's settings", "method": "method", "schedule": "schedule",
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
        stage2_only: bool = False, label: bool = False, stage1_when_set: bool = False, rule: Rule | None = None):
    """A config field with its ``--help`` text and group; ``choices``, for a name, are the keys of
    the registry it is looked up in (``--help`` lists them, argparse enforces them).

    What the field is part of, declared here so that a new field is safe by default:
    ``identity=False``: changes neither the numbers nor the run's identity (``config_hash``);
    ``stage2_only=True``: read only by stage 2, so not part of stage 1's identity (``stage1_hash``);
    ``label=True``: a name that changes no number (not part of stage 1's identity either);
    ``stage1_when_set=True``: part of stage 1's identity only when it differs from its default (which
    must keep the behaviour from before the field existed): for a field added later, so that new runs
    at the default get the same ``stage1_id`` as earlier ones, and pair with them.

    What it accepts, :func:`validate_config` checks: ``rule``, else the ``choices``; a bool field
    accepts True or False (from its annotation)."""
    if group not in CONFIG_GROUPS:
        raise ValueError(f"group={group!r}; valid: {', '.join(CONFIG_GROUPS)}")
    if rule is None and choices is not None:
        rule = one_of(choices)
    return field(default=default, metadata={"help": help, "group": group, "choices": choices, "rule": rule,
                                            "identity": identity, "stage2_only": stage2_only, "label": label,
                                            "stage1_when_set": stage1_when_set})


@dataclass
class TwoStageConfig:
    """Every setting of one run. The first 17 are the seed project's names and defaults, but for
    ``log_dir``: "results", where the seed wrote into the current folder."""
    model_name: str = opt(REQUIRED, "model", "seed", tuple(MODELS), rule=MODEL_NAME)
    imbalance_type: str = opt(REQUIRED, "scenario", "seed", data_loader.IMBALANCE_TYPES)
    stage1_epochs: int = opt(20, "epochs of stage 1 (cross-entropy from scratch for decoupled methods)", "seed",
                             rule=INT_AT_LEAST_0)
    stage2_epochs: int = opt(20, "epochs of stage 2 (fine-tuning from stage 1)", "seed", stage2_only=True,
                             rule=INT_AT_LEAST_0)
    imb_factor: float = opt(0.01, "smallest / largest class count, in (0, 1]", "seed",
                            rule=number_in(0, 1, lo_open=True))
    batch_size: int = opt(128, "training images per step", "seed", rule=INT_AT_LEAST_1)
    log_dir: str = opt("results", "folder for the CSV, JSON, model, checkpoints and the shared stage-1 cache",
                       "runtime", identity=False, rule=PATH)
    stage1_lr: float = opt(0.1, "stage-1 learning rate (SGD, per batch of batch_size)", "seed", rule=POSITIVE)
    stage2_lr: float = opt(0.01, "stage-2 learning rate", "seed", stage2_only=True, rule=POSITIVE)
    min_weight: float = opt(1.0, "smallest dynamic class weight (> 0)", "seed", stage2_only=True, rule=POSITIVE)
    max_weight: float = opt(8.0, "largest dynamic class weight (>= min_weight)", "seed", stage2_only=True,
                            rule=POSITIVE)
    ema_alpha: float = opt(0.8, "EMA of the per-class statistic: s = a*s_prev + (1-a)*x, a in [0, 1)", "seed",
                           stage2_only=True, rule=FRACTION)
    stage2_loss_type: str = opt("focal", "stage-2 loss of two_stage_ictta", "seed", STAGE2_LOSS_TYPES,
                                stage2_only=True)
    stage2_focal_gamma: float = opt(1.5, "focal gamma of two_stage_ictta's stage 2, in [0, 5]", "seed",
                                    stage2_only=True, rule=GAMMA)
    dynamic_mode: str = opt("loss", "per-class statistic of the dynamic weights (none: uniform weights)", "seed",
                            losses.DYNAMIC_MODES, stage2_only=True)
    exp_name: str | None = opt(None, "file-name prefix of the run (default: the method's name)", "seed",
                               label=True, rule=NAME.or_none())
    # --- beyond the seed
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
                                         "(default: the images as stored)", "data", stage1_when_set=True,
                                   rule=JPEG_QUALITY.or_none())
    momentum: float = opt(0.9, "SGD momentum", "schedule", rule=FRACTION)
    weight_decay: float = opt(2e-4, "SGD weight decay", "schedule", rule=NON_NEGATIVE)
    warmup_epochs: float = opt(1.0, "linear learning-rate warm-up at the start of stage 1, in epochs", "schedule",
                               rule=NON_NEGATIVE)
    schedule: str = opt("cosine", "cosine (each stage decays to 0) or step (x0.01, x0.0001 at lr_milestones)",
                        "schedule", SCHEDULES)
    lr_milestones: tuple = opt((160, 180), "global epochs of the step schedule's two decays", "schedule",
                               rule=MILESTONES)
    focal_gamma: float = opt(1.0, "gamma of the focal and cb_focal methods, in [0, 5]", "method", rule=GAMMA)
    cb_beta: float = opt(0.9999, "effective-number beta (cb_focal, drw, ldam_drw), in [0, 1)", "method",
                         rule=FRACTION)
    ldam_max_margin: float = opt(0.5, "largest LDAM margin", "method", rule=NON_NEGATIVE)
    ldam_scale: float = opt(30.0, "LDAM logit scale s", "method", rule=POSITIVE)
    prior_blend: float = opt(0.0, "dynamic weights: share of a count prior (inverse frequency) blended "
                                  "into the statistic, in [0, 1] (losses.DynamicClassWeights)", "method",
                               stage2_only=True, rule=number_in(0, 1))
    stage2_schedule: str = opt("inherit", "stage-2 learning rate: inherit (the run's schedule goes on) or "
                                          "cosine (restart at stage2_lr, cosine to 0 over stage 2)", "schedule",
                               STAGE2_SCHEDULES, stage2_only=True)
    normed_init: str = opt("unit", "init of LDAM's cosine classifier: unit (rows of norm 1, the "
                                   "reference) or uniform (raw U(-1, 1) rows, this project's earlier init)",
                           "method", NORMED_INITS)
    la_tau: float = opt(1.0, "logit-adjustment tau", "method", rule=NON_NEGATIVE)
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
                                          "for a change shown numerically neutral (README)", "runtime",
                                  identity=False)
    tag: str = opt("", "free label copied into every row (the grid writes <suite>-<profile>)", "runtime",
                   label=True, rule=STRING)


# settings that change neither the numbers nor the run's identity (``identity=False`` at the field)
_NOT_IDENTITY = tuple(f.name for f in dataclasses.fields(TwoStageConfig) if not f.metadata["identity"])
_NOT_IN_HASH = _NOT_IDENTITY + ("tag",)


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
    check_setting(METHODS[cfg.method].evaluate is not evaluate_tau_norm or cfg.val_per_class > 0, "val_per_class",
                  cfg.val_per_class, f"> 0 for method={cfg.method!r} (tau is chosen on validation)")


def config_hash(cfg: TwoStageConfig) -> str:
    """A run's identity: the settings that differ from their defaults (a new setting whose default
    keeps the old behaviour leaves earlier runs' identities alone; a changed default changes the
    code fingerprint, which guards the numbers)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    d = {k: v for k, v in asdict(cfg).items()
         if k not in _NOT_IN_HASH and (k not in defaults or _normal(v) != _normal(defaults[k]))}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _normal(value):
    """Tuples and lists compare equal (a JSON round trip turns one into the other)."""
    return list(value) if isinstance(value, (tuple, list)) else value


def stage1_hash(cfg: TwoStageConfig) -> str:
    """Identity of stage 1: every setting but those declared not to matter to it at their field
    (``identity=False``, ``stage2_only``, ``label``), the method replaced by its stage-1 loss, weights
    and classifier, the data folder by its resolved path. A new setting is part of it by default
    (a ``stage1_when_set`` one only when set)."""
    m = METHODS[cfg.method]
    d = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
         if f.metadata["identity"] and not f.metadata["stage2_only"] and not f.metadata["label"]
         and f.name != "method" and not (f.metadata["stage1_when_set"] and getattr(cfg, f.name) == f.default)}
    d.update(loss1=m.loss1, weights1=m.weights1, normed=m.normed_classifier,
             data=str(data_folder(cfg)))
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage1_path(cfg: TwoStageConfig) -> Path:
    """The shared stage-1 checkpoint of ``cfg``: the first run in ``log_dir`` with this stage 1
    writes it, the others load it."""
    return Path(cfg.log_dir) / "stage1" / f"stage1_{stage1_hash(cfg)}.pt"


# The modules whose code determines a run's numbers. Their fingerprint is part of a result's
# identity: a result made by other code is never skipped as finished, resumed, or shared as a
# stage 1, unless the run says accept_code_change.
NUMERIC_MODULES = ("data_loader", "model", "losses", "train_eval", "two_stage_ictta")


@functools.lru_cache(maxsize=None)
def code_fingerprint(folder: str = str(Path(__file__).resolve().parent)) -> str:
    """A hash of the numeric modules' syntax trees, docstrings removed: comments, docstrings and
    layout do not change it, any change to a statement or a constant does."""
    h = hashlib.sha1()
    for name in NUMERIC_MODULES:
        tree = ast.parse((Path(folder) / f"{name}.py").read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        h.update(f"{name}\n{ast.dump(tree)}\n".encode())
    return h.hexdigest()[:12]


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


# ----------------------------------------------------------------------------------------------
# Pieces of a run

def lr_at_step(step: int, steps_per_epoch: int, cfg: TwoStageConfig, stage: int) -> float:
    """Learning rate of global step ``step`` (0-based; global epoch ``e = step / steps_per_epoch``).

    * stage 1: ``stage1_lr``, linear warm-up ``min(1, (step + 1) / (warmup_epochs * steps_per_epoch))``;
    * stage 2: ``stage2_lr``; ``cosine`` within stage 2 when ``stage2_schedule="cosine"`` (and always
      for cRT's new classifier), else the run's ``schedule`` goes on;
    * ``cosine``: ``base * (1 + cos(pi * t / T)) / 2`` with ``t``, ``T`` the step and length within the stage;
    * ``step``: ``base`` times 0.01 from global epoch ``lr_milestones[0]`` on, 0.0001 from ``[1]`` on.
    """
    e1 = cfg.stage1_epochs * steps_per_epoch
    base = cfg.stage1_lr if stage == 1 else cfg.stage2_lr
    local, length = (step, e1) if stage == 1 else (step - e1, cfg.stage2_epochs * steps_per_epoch)
    restarts = METHODS[cfg.method].stage2_cosine or cfg.stage2_schedule == "cosine"
    schedule = "cosine" if stage == 2 and restarts else cfg.schedule
    if schedule == "cosine":
        lr = base * 0.5 * (1 + math.cos(math.pi * local / max(length, 1)))
    else:
        epoch = step / steps_per_epoch
        lr = base * (1e-4 if epoch >= cfg.lr_milestones[1] else 1e-2 if epoch >= cfg.lr_milestones[0] else 1.0)
    if stage == 1 and cfg.warmup_epochs > 0:
        lr *= min(1.0, (step + 1) / (cfg.warmup_epochs * steps_per_epoch))
    return lr


def _ictta_loss(counts, cfg: TwoStageConfig, device):
    """two_stage_ictta's stage-2 loss: focal (gamma=stage2_focal_gamma) or CE, per stage2_loss_type."""
    if cfg.stage2_loss_type == "focal":
        return partial(losses.focal_loss, gamma=cfg.stage2_focal_gamma)
    return losses.focal_loss


def _balanced_softmax_loss(counts, cfg: TwoStageConfig, device):
    log_counts = torch.tensor(counts, dtype=torch.float64).log().float().to(device)
    return partial(losses.logit_adjusted_loss, log_priors=log_counts, tau=1.0)


# The losses a Method names, each built from (counts, cfg, device) as f(logits, y, weight, reduction).
LOSSES = {
    "ce": lambda counts, cfg, device: losses.focal_loss,
    "focal": lambda counts, cfg, device: partial(losses.focal_loss, gamma=cfg.focal_gamma),
    "ldam": lambda counts, cfg, device: partial(
        losses.ldam_loss, margins=losses.ldam_margins(counts, cfg.ldam_max_margin).to(device), scale=cfg.ldam_scale),
    "logit_adjust": lambda counts, cfg, device: partial(
        losses.logit_adjusted_loss, log_priors=losses.log_prior(counts).to(device), tau=cfg.la_tau),
    "balanced_softmax": _balanced_softmax_loss,
    "ictta": _ictta_loss,
}


def build_loss(name: str, counts, cfg: TwoStageConfig, device="cpu"):
    """The loss function ``f(logits, y, weight, reduction)`` of a method's stage (:data:`LOSSES`);
    its constant tensors (margins, priors) live on ``device`` so the step loop copies nothing."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name](counts, cfg, device)


def static_weights(kind: str, counts, cfg: TwoStageConfig) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "inverse":
        return losses.inverse_frequency_weights(counts)
    if kind == "effective":
        return losses.effective_number_weights(counts, cfg.cb_beta)
    raise ValueError(f"unknown weights {kind!r}")


def data_folder(cfg: TwoStageConfig) -> Path:
    """The data root ``cfg`` names (its default when unset), resolved."""
    return Path(cfg.data_root or data_loader.default_data_root(cfg.dataset)).resolve()


def data_read_elsewhere(cfg: TwoStageConfig, meta: dict) -> str | None:
    """The folder a finished run read its data from (``meta["data_source"]``, resolved), when it
    is not ``cfg``'s data root nor inside it; None when it is, or when the run recorded no
    absolute path (runs before 2026-11-27 evening kept the path as typed: no telling from where)."""
    source = meta.get("data_source")
    if not source or not Path(source).is_absolute():
        return None
    root, read = data_folder(cfg), Path(source).resolve()
    return None if read == root or root in read.parents else source


def is_finished(cfg: TwoStageConfig, meta: dict | None) -> bool:
    """Whether ``meta`` (the run's JSON) records a finished run of exactly these settings, made by
    this code (or kept by ``accept_code_change``), whose CSV exists: what a rerun skips, and what
    the grid's ``--status`` counts as done."""
    return (meta is not None and meta.get("status") == "finished" and meta.get("run_id") == config_hash(cfg)
            and made_by_other_code(meta, cfg) is None
            and runfiles.run_paths(cfg.log_dir, run_name(cfg))["csv"].exists())


def _metric_row(metrics: dict, stage: int, epoch: int, global_epoch: int, split: str, lr: float,
                train_loss: float, seconds: float, weights, extra: dict) -> dict:
    row = {"stage": stage, "epoch": epoch, "global_epoch": global_epoch, "split": split, "lr": lr,
           "train_loss": train_loss, "seconds": round(seconds, 3)}
    for k in ("loss", "acc", "macro_f1", "tail_macro_f1", "head_macro_f1", "many_acc", "medium_acc", "few_acc"):
        row[k] = metrics[k]
    row.update({f"f1_{c}": float(v) for c, v in enumerate(metrics["f1"])})
    row.update({f"acc_{c}": float(v) for c, v in enumerate(metrics["recall"])})
    row.update({f"w_{c}": float(v) for c, v in enumerate(weights)})
    row.update(extra)
    return row


# ----------------------------------------------------------------------------------------------
# The run

def run_two_stage(cfg: TwoStageConfig) -> dict:
    """Run one configuration end to end (see the module docstring); returns the results dict."""
    validate_config(cfg)
    log_dir = Path(cfg.log_dir)
    if cli.nearest_existing(log_dir).is_file():
        raise ValueError(f"log_dir={str(log_dir)!r}: {cli.nearest_existing(log_dir)} is a file, not a folder")
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        probe = log_dir / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"log_dir={str(log_dir)!r} cannot be written: {e}") from e
    name = run_name(cfg)
    paths = runfiles.run_paths(log_dir, name)
    run_id = config_hash(cfg)
    previous = read_json(paths["config"])
    if previous is not None and previous.get("run_id") != run_id and paths["csv"].exists():
        raise ValueError(f"exp_name={cfg.exp_name!r}: {paths['csv']} already holds a run with other "
                         f"settings (run_id {previous.get('run_id')} != {run_id}); choose another "
                         f"exp_name or log_dir")
    if cfg.resume and is_finished(cfg, previous):  # whoever holds its lock now
        return _reuse_finished(cfg, name, previous)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with RunLock(runfiles.lock_path(log_dir, name)):
        previous = read_json(paths["config"])  # again, under the lock: another process may have finished it
        if cfg.resume and is_finished(cfg, previous):
            return _reuse_finished(cfg, name, previous)
        stale = previous is not None and previous.get("status") == "finished" and made_by_other_code(previous, cfg)
        if cfg.resume and stale:
            print(f"rerunning {name}: its finished result was {stale}", file=sys.stderr)
        runfiles.remove_attempt_tmp(log_dir, name)  # of an attempt that was killed
        runfiles.remove_dead_writers_tmp(stage1_path(cfg))  # the shared stage 1 is not ours alone
        return _run_locked(cfg, paths, run_id)


@dataclass
class RunData:
    """A run's data on the device: the long-tailed training subset and the held-out splits, each
    ``(uint8 images, labels)``, with the normalisation they share."""
    data: data_loader.ImageData
    split: data_loader.Split
    norm: data_loader.Normalizer
    train: tuple
    val: tuple
    stat: tuple
    test: tuple

    @property
    def counts(self) -> list:
        return self.split.counts

    @property
    def num_classes(self) -> int:
        return self.data.num_classes


def prepare_data(cfg: TwoStageConfig, device: torch.device) -> RunData:
    """Load the dataset, draw the run's subset and splits (seeded by ``cfg.seed``), re-encode them at
    ``cfg.jpeg_quality`` if set (normalised with the stored images' constants), put them on ``device``."""
    data = data_loader.load_dataset(cfg.data_root, cfg.download, cfg.dataset)
    split = data_loader.make_split(data.train_y, cfg.imbalance_type, cfg.imb_factor, n_max=cfg.n_max,
                                   val_per_class=cfg.val_per_class, stat_per_class=cfg.stat_per_class,
                                   seed=cfg.seed)
    def to_dev(x):
        x = x if cfg.jpeg_quality is None else data_loader.recompress_jpeg(x, cfg.jpeg_quality)
        return data_loader.to_device_images(x, device)

    on_device = lambda idx: (to_dev(data.train_x[idx]), torch.from_numpy(data.train_y[idx]).to(device))
    return RunData(data, split, data_loader.Normalizer(data.mean, data.std, device),
                   on_device(split.train_idx), on_device(split.val_idx), on_device(split.stat_idx),
                   (to_dev(data.test_x), torch.from_numpy(data.test_y).to(device)))


def build_model(cfg: TwoStageConfig, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The run's model with its seeded init (the caller's global RNG untouched), on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = get_model(cfg.model_name, num_classes, normed_classifier=METHODS[cfg.method].normed_classifier,
                          normed_init=cfg.normed_init)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _reuse_finished(cfg: TwoStageConfig, name: str, previous: dict) -> dict:
    """The results of a run finished before, and a notice if they were read from other data."""
    elsewhere = data_read_elsewhere(cfg, previous)
    if elsewhere:
        print(f"{name}: reusing its finished result, read from {elsewhere}; data_root is not part of a "
              f"run's identity (a moved copy reuses its runs): to train on this data_root, pass "
              f"--no-resume (resume=False) or another exp_name", file=sys.stderr)
    return {**previous["results"], "skipped": True}


@dataclass
class RunState:
    """The counters one epoch hands the next (and a checkpoint keeps)."""
    stage: int = 1
    epoch: int = 0  # last finished epoch of this stage
    step: int = 0  # optimizer steps so far, both stages
    train_class_loss: torch.Tensor | None = None  # per-class training loss of the last epoch


@dataclass
class Run:
    """What a run trains and carries between epochs; ``snapshot``/``restore`` are its checkpoint."""
    cfg: TwoStageConfig
    method: Method
    data: RunData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the batch order's; both stages draw from it, so the stream goes on
    batches: data_loader.DeviceBatches
    dyn: losses.DynamicClassWeights
    logger: RunLogger
    made_by: dict  # what made this run, oldest first: "code_fingerprints", "cpu_threads" (lists, in its JSON)
    state: RunState = field(default_factory=RunState)
    confusion_test: dict = field(default_factory=dict)  # "stage1"/"stage2": the test matrix at the stage's end

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        c = self.cfg
        return torch.optim.SGD(params, lr=c.stage1_lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def snapshot(self, run_id: str) -> dict:
        return {"run_id": run_id, "code_fingerprint": code_fingerprint(), **self.made_by,
                "st": dict(vars(self.state)), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "data": self.batches.state_dict(),
                "dyn": self.dyn.state_dict(), "rows": self.logger.rows, "confusion_test": self.confusion_test}

    def restore(self, snap: dict) -> None:
        self.state = RunState(**snap["st"])
        if self.state.stage == 2:  # the stage-2 model and optimizer have the shapes to load into
            self.method.enter_stage2(self, False)
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.batches.load_state_dict(snap["data"])
        self.dyn.load_state_dict(snap["dyn"])
        self.logger.rows = list(snap["rows"])
        self.confusion_test = dict(snap.get("confusion_test", {}))  # older checkpoints have none
        for key, seen in self.made_by.items():  # older checkpoints lack some: nothing known
            seen[:] = list(dict.fromkeys(snap.get(key, []) + seen))


def start_run(cfg: TwoStageConfig, rd: RunData, model, logger: RunLogger, made_by: dict) -> Run:
    """A run at its first step: SGD on every parameter, uniform batches from the seeded generator."""
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = data_loader.DeviceBatches(*rd.train, cfg.batch_size, rd.norm, gen, channels_last=cfg.channels_last)
    dyn = losses.DynamicClassWeights(rd.num_classes, cfg.min_weight, cfg.max_weight, cfg.ema_alpha,
                                     cfg.dynamic_mode, cfg.prior_blend, rd.counts)
    run = Run(cfg, METHODS[cfg.method], rd, model, None, gen, batches, dyn, logger, made_by)
    run.optimizer = run.make_optimizer(model.parameters())
    return run


def class_weights(run: Run, stage: int) -> torch.Tensor | None:
    """The class weights of the coming epoch: static ones from the counts, or dynamic ones from the
    statistic of the epoch just before this one."""
    kind = run.method.weights(stage)
    if kind != "dynamic":
        return static_weights(kind, run.data.counts, run.cfg)
    stat_fn = partial(_held_out_stat, run.model, run.data.norm, run.data.counts, run.cfg, run.data.stat)
    return run.dyn.update(_dynamic_stat(run.cfg.dynamic_mode, run.state, stat_fn))


def _run_locked(cfg: TwoStageConfig, paths: dict, run_id: str) -> dict:
    """The run, its lock held: set up the data, model and :class:`Run`, resume what can be resumed,
    then the epoch loop (:func:`_train_stages`), and the final files."""
    device = resolve_device(cfg.device)
    meta = _run_record(cfg, paths, run_id, device)
    rd = prepare_data(cfg, device)
    meta.update(_data_facts(rd))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # CUDA runs are not bitwise reproducible anyway (README)
    model = build_model(cfg, rd.num_classes, device)
    forward = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
    curves = live_curves.TensorBoardCurves(Path(cfg.log_dir) / "tensorboard" / paths["csv"].stem) \
        if cfg.tensorboard else None
    logger = RunLogger(paths["csv"], _row_identity(cfg, run_id, meta["stage1_id"]), mirror=curves)
    run = start_run(cfg, rd, model, logger, {k: meta[k] for k in ("code_fingerprints", "cpu_threads")})
    resumed = _resume(run, cfg, paths, run_id, device)
    meta.update(resumed)
    write_json(paths["config"], meta)

    t_run = time.perf_counter()
    try:
        _train_stages(run, forward, paths, run_id)
    except BaseException as e:
        meta.update(**_confusion_of(run), status="failed" if isinstance(e, Exception) else "interrupted",
                    error=f"{type(e).__name__}: {e}", failed=now())
        logger.flush()
        write_json(paths["config"], meta)
        raise
    finally:
        if curves is not None:
            curves.close()

    results = {"run_id": run_id, "stage1_id": meta["stage1_id"], **summarize_rows(logger.full_rows()),
               "paths": {k: str(v) for k, v in paths.items() if k != "checkpoint"},
               **resumed,
               "seconds": time.perf_counter() - t_run}
    saved_model.save(paths["model"], run.model, cfg, rd.data, rd.counts, logger.rows, run_id, code_fingerprint())
    meta.update(**_confusion_of(run), status="finished", finished=now(), results=results)
    logger.flush()
    write_json(paths["config"], meta)
    paths["checkpoint"].unlink(missing_ok=True)
    return results


def _confusion_of(run: Run) -> dict:
    """The run JSON's ``confusion_test`` (the stages that ended), or nothing before any did."""
    return {"confusion_test": run.confusion_test} if run.confusion_test else {}


def _run_record(cfg: TwoStageConfig, paths: dict, run_id: str, device: torch.device) -> dict:
    """The run's JSON as it starts: its identity, code, machine and files."""
    return {"run_id": run_id, "stage1_id": stage1_hash(cfg), "config": asdict(cfg),
            "git_commit": git_commit(), "torch": torch.__version__, "device": str(device),
            # CPU results are bitwise reproducible for a given thread count, not across counts
            "torch_threads": torch.get_num_threads(), "host": socket.gethostname(), "started": now(),
            "status": "running", "paths": {k: str(v) for k, v in paths.items()},
            "code_fingerprint": code_fingerprint(), "code_fingerprints": [code_fingerprint()],
            "cpu_threads": [torch.get_num_threads()] if device.type == "cpu" else []}


def _data_facts(rd: RunData) -> dict:
    """What the run's JSON records of its data."""
    return dict(class_counts=rd.counts, classes=list(rd.data.classes),
                data_source=str(Path(rd.data.source).resolve()), n_train=int(len(rd.split.train_idx)),
                n_val=int(len(rd.split.val_idx)), n_stat=int(len(rd.split.stat_idx)),
                normalization={"mean": rd.data.mean, "std": rd.data.std, "over": "the whole training split"})


def _train_stages(run: Run, forward, paths: dict, run_id: str) -> None:
    """Both stages' epochs from where ``run.state`` stands, with a progress bar; stage 1 is shared
    (``reuse_stage1``) once it ends."""
    cfg, st = run.cfg, run.state
    bar = tqdm(total=cfg.stage1_epochs + cfg.stage2_epochs, disable=cfg.quiet, leave=False, dynamic_ncols=True,
               desc=f"{cfg.model_name}/{cfg.imbalance_type}/{cfg.exp_name or cfg.method}")
    bar.update(st.epoch + (cfg.stage1_epochs if st.stage == 2 else 0))
    try:
        for stage, n_epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
            if stage < st.stage or n_epochs == 0:
                continue
            if stage == 2 and st.stage == 1:  # entering stage 2 now
                st.stage, st.epoch = 2, 0
                run.method.enter_stage2(run, True)
            loss_fn = build_loss(run.method.loss(stage), run.data.counts, cfg, resolve_device(cfg.device))
            lr_fn = partial(lr_at_step, steps_per_epoch=len(run.batches), cfg=cfg, stage=stage)
            for epoch in range(st.epoch + 1, n_epochs + 1):
                _train_epoch(run, forward, stage, epoch, n_epochs, loss_fn, lr_fn, bar)
                atomic_torch_save(run.snapshot(run_id), paths["checkpoint"])
                bar.update(1)
            if stage == 1 and cfg.reuse_stage1:
                _share_stage1(run, cfg, run_id)
    finally:
        bar.close()


def _train_epoch(run: Run, forward, stage: int, epoch: int, n_epochs: int, loss_fn, lr_fn, bar) -> None:
    """One epoch of ``stage``: train, then on evaluation epochs evaluate and log (the last epoch of
    a stage also keeps its test confusion matrix in ``run``, so in its checkpoints); flush the rows."""
    cfg, st, C = run.cfg, run.state, run.data.num_classes
    t0 = time.perf_counter()
    weights = class_weights(run, stage)
    out = train_one_epoch(run.model, run.batches, run.optimizer, loss_fn, lr_fn, st.step, C,
                          class_weights=weights, precision=cfg.precision,
                          normalization=run.method.normalization, forward=forward)
    st.step += out["steps"]
    st.train_class_loss = out["class_loss"]
    last = epoch == n_epochs
    if last or epoch % cfg.eval_every == 0:
        res = run.method.evaluate(run, stage)
        row_w = (weights if weights is not None else torch.ones(C)).tolist()
        _log_epoch(run.logger, res, stage, epoch, epoch + (cfg.stage1_epochs if stage == 2 else 0),
                   lr_fn(st.step - 1), out["loss"], time.perf_counter() - t0, row_w)
        if last:
            run.confusion_test[f"stage{stage}"] = res["test"]["confusion"]
        bar.set_postfix(stage=stage, loss=f"{out['loss']:.3f}",
                        val_f1=f"{res.get('val', res['test'])['macro_f1']:.3f}")
    st.epoch = epoch
    run.logger.flush()


def _row_identity(cfg: TwoStageConfig, run_id: str, stage1_id: str) -> dict:
    """The identity columns of every CSV row: the ids and every setting that is part of it."""
    renamed = {"model_name": "model", "imbalance_type": "scenario"}  # the CSV's column names
    return {"run_id": run_id, "stage1_id": stage1_id, "exp_name": cfg.exp_name or cfg.method,
            **{renamed.get(k, k): (str(v) if isinstance(v, (tuple, list)) else v)
               for k, v in asdict(cfg).items() if k not in _NOT_IDENTITY + ("exp_name",)}}


def _resume(run: Run, cfg: TwoStageConfig, paths: dict, run_id: str, device) -> dict:
    """Restore ``run`` from its own checkpoint, else from a shared stage 1 made by this code.
    Returns what the run's JSON records of it: ``resumed_from``, the (stage, epoch) resumed from, or
    None; and ``stage1_reused``, a bool. A checkpoint made with other CPU thread counts gets a notice
    (the numbers then differ in the last bits from an uninterrupted run's; ``cpu_threads`` in the
    run's JSON lists every count that made it)."""
    name = paths["csv"].stem

    def usable(path: Path, what: str) -> dict | None:
        """The checkpoint at ``path`` if it exists and was made by this code (or is accepted)."""
        if not path.exists():
            return None
        snap = load_checkpoint(path, device)
        why_not = made_by_other_code(snap, cfg)
        if why_not:
            print(f"{name}: not reusing {what} {path.name}: {why_not}", file=sys.stderr)
            return None
        return snap

    def note_other_threads(snap: dict, path: Path) -> None:
        other = [n for n in snap.get("cpu_threads", []) if n != torch.get_num_threads()]
        if other and device.type == "cpu":
            print(f"{name}: {path.name} was made on {' and '.join(map(str, other))} CPU thread(s), this run "
                  f"uses {torch.get_num_threads()}: its numbers will differ in the last bits from an "
                  f"uninterrupted run's (--threads {other[-1]} gives the same ones)", file=sys.stderr)

    snap = usable(paths["checkpoint"], "checkpoint") if cfg.resume else None
    if snap is not None and snap.get("run_id") == run_id:
        note_other_threads(snap, paths["checkpoint"])
        run.restore(snap)
        return {"resumed_from": (run.state.stage, run.state.epoch), "stage1_reused": False}
    snap = usable(stage1_path(cfg), "stage 1") if cfg.reuse_stage1 and cfg.stage1_epochs > 0 else None
    if snap is not None:
        note_other_threads(snap, stage1_path(cfg))
        run.restore(snap)
        return {"resumed_from": None, "stage1_reused": True}
    return {"resumed_from": None, "stage1_reused": False}


def _share_stage1(run: Run, cfg: TwoStageConfig, run_id: str) -> None:
    """Save the finished stage 1 for the runs that share it, unless a current one is there."""
    stage1_file = stage1_path(cfg)
    stage1_file.parent.mkdir(exist_ok=True)
    if not stage1_file.exists() or made_by_other_code(_load_meta_only(stage1_file), cfg):
        atomic_torch_save(run.snapshot(run_id), stage1_file)


def _log_epoch(logger: RunLogger, res: dict, stage: int, epoch: int, global_epoch: int, lr: float,
               train_loss: float, seconds: float, row_w: list) -> None:
    """One CSV row per evaluated split; a non-finite loss stops the run."""
    for split_name, m in res.items():
        if not np.isfinite(m["loss"]):
            raise NonFiniteError(f"{split_name} loss is {m['loss']} at stage {stage} epoch {epoch}")
        extra = {"tau": m["tau"]} if "tau" in m else {}
        logger.log(_metric_row(m, stage, epoch, global_epoch, split_name, lr, train_loss, seconds, row_w, extra))


def _dynamic_stat(mode: str, st: RunState, held_out_stat):
    """The per-class statistic that the next stage-2 epoch's weights come from: the last epoch's
    training loss, or ``held_out_stat(mode)`` measured now, after it, on the statistic split.
    None before any training epoch (``stage1_epochs=0``): no epoch has been seen yet."""
    if mode in ("none", "loss"):
        return st.train_class_loss
    return held_out_stat(mode) if st.step > 0 else None


def _held_out_stat(model, norm, counts, cfg, stat_split, mode: str) -> torch.Tensor:
    """``val_loss`` (per-class mean cross-entropy) or ``val_error`` (1 - per-class recall) of the
    model on the statistic split (never the validation split, which selects); NaN for a class the
    split lacks, which the weights refuse rather than read as an easy or a hard class."""
    m = evaluate(model, *stat_split, norm, counts, batch_size=cfg.eval_batch_size,
                 precision=cfg.precision, channels_last=cfg.channels_last)
    if mode == "val_loss":
        return m["class_loss"]
    error = 1.0 - torch.as_tensor(m["recall"], dtype=torch.float64)
    return torch.where(torch.as_tensor(m["support"]) > 0, error, torch.nan)


def load_checkpoint(path: Path, device="cpu") -> dict:
    """A run's checkpoint or a shared stage 1; one error line naming the file if it cannot be read."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # truncated, corrupted, or not a checkpoint: torch raises many kinds
        why = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {why}); delete it, and the run "
                         f"trains what it held again") from e


def _load_meta_only(path: Path) -> dict:
    return {"code_fingerprint": load_checkpoint(path).get("code_fingerprint")}


def _freeze_for_crt(model, reinit_seed: int | None = None) -> None:
    """Freeze everything but the classifier; with ``reinit_seed``, re-initialise the classifier."""
    for p in model.parameters():
        p.requires_grad_(False)
    if reinit_seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(reinit_seed)
            model.fc.reset_parameters()
    for p in model.fc.parameters():
        p.requires_grad_(True)


@torch.no_grad()
def _evaluate_tau_norm(model, norm, counts, cfg, val, test) -> dict:
    """Evaluate the bias-free tau-normalised classifier (:func:`losses.tau_norm_logits`); tau
    maximises validation macro-F1."""
    W = model.fc.weight.float()
    splits = {"val": val, "test": test}
    feats = {name: predict(model, x, norm, cfg.eval_batch_size, cfg.precision, cfg.channels_last, features=True)
             for name, (x, _) in splits.items()}

    def ev(name: str, tau: float) -> dict:
        logits = losses.tau_norm_logits(feats[name], W, tau)
        return {**evaluate(model, *splits[name], norm, counts, logits=logits), "tau": tau}

    best_tau = max(TAU_GRID, key=lambda tau: (ev("val", tau)["macro_f1"], -tau))  # ties: smaller tau
    return {name: ev(name, best_tau) for name in splits}


def run_two_stage_ictta_on_scenario(model_name: str, imbalance_type: str, **settings) -> dict:
    """Run one two-stage configuration on one imbalance scenario; return its results.

    Every keyword is a field of :class:`TwoStageConfig` (the signature below lists them with their
    defaults); an unknown keyword raises ``TypeError``, an invalid value ``ValueError``.
    The returned dict holds, per stage, the final and best-by-validation metrics on val and test,
    the stage-2 minus stage-1 deltas on test, and the paths written.
    """
    return run_two_stage(TwoStageConfig(model_name, imbalance_type, **settings))


run_two_stage_ictta_on_scenario.__signature__ = inspect.signature(TwoStageConfig).replace(
    return_annotation=dict)


if __name__ == "__main__":
    sys.exit("two_stage_ictta.py is the library; from a shell run: python main.py --help")
