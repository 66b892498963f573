"""The methods: what each stage trains with, and the registry that names them.

Every method is two stages over one model, one data stream and one learning-rate schedule
(:mod:`two_stage_ictta` runs them). A :class:`Method` says, per stage, its loss (a name of
:data:`LOSSES`) and its class weights (``none``, ``inverse`` frequency, ``effective`` number, or
``dynamic``: :class:`losses.DynamicClassWeights`), plus two hooks:

* ``enter_stage2(model, fresh, seed)``: how stage 2 starts. None goes on with stage 1's optimizer
  and batches; a :class:`Stage2Start` names the parameters of a new optimizer (or its parameter
  groups) and the sampler of a new batch stream (cRT's frozen backbone and class-balanced batches),
  and whether BatchNorm's statistics freeze and a MaxNorm radius holds the classifier's rows.
* ``evaluate(ctx, stage)``: the metrics on test and validation (:class:`EvalContext` is what it
  sees of the run): plain evaluation for every method but tau-norm, whose stage 2 evaluates the
  tau-normalised classifier.

To add a method, add an entry to :data:`METHODS` (and, for a new loss, to :data:`LOSSES`, with the
settings it reads, which are then part of a stage's identity only where that stage uses it); the
command lines, the grid and the experiment files read the registry.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

import torch

import data_loader
import losses
from model import LogitScale
from train_eval import evaluate, predict


# ----------------------------------------------------------------------------------------------
# What a method's hooks see of a run

@dataclass(frozen=True)
class EvalContext:
    """A run's model and held-out splits, each ``(uint8 images, labels)``, and how to evaluate them."""
    model: torch.nn.Module
    norm: data_loader.Normalizer
    counts: list  # training images per class: the head/tail groups of the metrics
    val: tuple
    test: tuple
    batch_size: int
    precision: str
    channels_last: bool

    def evaluate(self, split: tuple, **kwargs) -> dict:
        return evaluate(self.model, *split, self.norm, self.counts, batch_size=self.batch_size,
                        precision=self.precision, channels_last=self.channels_last, **kwargs)


@dataclass(frozen=True)
class Stage2Start:
    """Stage 2 trains a new optimizer over ``params`` (parameters, or SGD parameter groups whose
    ``weight_decay`` or ``"lr_scale"`` override the run's) on a new batch stream drawn with
    ``sampler`` (from the run's generator, so the stream goes on). ``freeze_bn_stats`` keeps every
    BatchNorm layer in eval mode while stage 2 trains; ``max_norm``, a radius, projects the
    classifier's rows onto that ball after every stage-2 epoch (``train_eval.train_one_epoch``)."""
    params: Iterable
    sampler: str
    freeze_bn_stats: bool = False
    max_norm: float | None = None


# ----------------------------------------------------------------------------------------------
# The hooks

def evaluate_splits(ctx: EvalContext, stage: int) -> dict:
    """Metrics on test, and on val when the run has a validation split."""
    out = {"test": ctx.evaluate(ctx.test)}
    if len(ctx.val[1]):
        out["val"] = ctx.evaluate(ctx.val)
    return out


TAU_GRID = tuple(round(0.1 * i, 1) for i in range(21))  # tau-norm's candidates, chosen on validation


def evaluate_tau_norm(ctx: EvalContext, stage: int) -> dict:
    """tau-norm: stage 2 evaluates the tau-normalised classifier, tau chosen on val, then reports test."""
    if stage == 1:
        return evaluate_splits(ctx, stage)
    return _evaluate_tau_norm(ctx)


@torch.no_grad()
def _evaluate_tau_norm(ctx: EvalContext) -> dict:
    """Evaluate the bias-free tau-normalised classifier (:func:`losses.tau_norm_logits`); tau
    maximises validation macro-F1 (ties: the smaller tau)."""
    W = ctx.model.fc.weight.float()
    splits = {"val": ctx.val, "test": ctx.test}
    feats = {name: predict(ctx.model, x, ctx.norm, ctx.batch_size, ctx.precision, ctx.channels_last, features=True)
             for name, (x, _) in splits.items()}

    def ev(name: str, tau: float) -> dict:
        logits = losses.tau_norm_logits(feats[name], W, tau)
        return {**ctx.evaluate(splits[name], logits=logits), "tau": tau}

    best_tau = max(TAU_GRID, key=lambda tau: (ev("val", tau)["macro_f1"], -tau))
    return {name: ev(name, best_tau) for name in splits}


def keep_classifier(model: torch.nn.Module, fresh: bool, seed: int) -> None:
    """Stage 2 goes on with the stage-1 model, optimizer and batches: every method but cRT."""
    return None


def retrain_classifier(model: torch.nn.Module, fresh: bool, seed: int) -> Stage2Start:
    """cRT's stage 2: freeze the backbone, a new classifier (re-initialised from ``seed + 1`` when
    ``fresh``, i.e. not resumed from a stage-2 checkpoint) with its own optimizer, and
    class-balanced batches."""
    for p in model.parameters():
        p.requires_grad_(False)
    if fresh:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model.fc.reset_parameters()
    for p in model.fc.parameters():
        p.requires_grad_(True)
    return Stage2Start(model.fc.parameters(), "class_balanced")


def _train_only_the_classifier(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.fc.parameters():
        p.requires_grad_(True)


MISLAS_FC_LR_SCALE = 0.5  # MiSLAS's stage 2 runs its classifier at half the learning rate (lr_factor)


def retrain_with_logit_scale(model: torch.nn.Module, fresh: bool, seed: int) -> Stage2Start:
    """MiSLAS's stage 2: the backbone frozen, BatchNorm statistics included (its CIFAR-10 configs
    set ``shift_bn: False``); the stage-1 classifier trains on (not re-initialised) at
    ``MISLAS_FC_LR_SCALE`` times the learning rate, followed by a learnable per-class logit scale
    (:class:`model.LogitScale`, ones at the start) at the full rate; class-balanced batches.
    ``model.fc`` becomes ``Sequential(fc, LogitScale)``, fresh or resumed (a resumed run's weights
    load into that shape); a saved model folds the scale into the classifier."""
    fc = model.fc
    scale = LogitScale(fc.out_features).to(fc.weight.device)
    model.fc = torch.nn.Sequential(fc, scale)
    _train_only_the_classifier(model)
    groups = [{"params": list(fc.parameters()), "lr_scale": MISLAS_FC_LR_SCALE}, {"params": list(scale.parameters())}]
    return Stage2Start(groups, "class_balanced", freeze_bn_stats=True)


WB_FC_WEIGHT_DECAY = 0.1  # weight balancing's stage-2 weight decay on the classifier
WB_MAX_NORM_THRESH = 0.1  # its MaxNorm threshold, relative to the stage-1 rows' norms


def balance_classifier(model: torch.nn.Module, fresh: bool, seed: int) -> Stage2Start:
    """Weight balancing's stage 2 (Alshammari et al. 2022): only the classifier trains, on from its
    stage-1 weights, with weight decay ``WB_FC_WEIGHT_DECAY`` and MaxNorm on its rows at the radius
    :func:`losses.max_norm_radius` gives with ``WB_MAX_NORM_THRESH`` on the stage-1 rows (the run
    keeps the radius of the fresh start; a resumed one is measured on weights not loaded yet and
    ignored); the instance-balanced batches go on; BatchNorm in train mode, as the reference."""
    _train_only_the_classifier(model)
    radius = losses.max_norm_radius(model.fc.weight, WB_MAX_NORM_THRESH)
    return Stage2Start([{"params": list(model.fc.parameters()), "weight_decay": WB_FC_WEIGHT_DECAY}], "uniform",
                       max_norm=radius)


# ----------------------------------------------------------------------------------------------
# The registry

@dataclass(frozen=True)
class Method:
    """What a method does in each stage: loss and class weights, and its stage-specific hooks."""
    loss1: str
    weights1: str
    loss2: str
    weights2: str
    doc: str
    normed_classifier: bool = False  # cosine classifier (LDAM)
    normalization: str = "mean"  # a weighted loss's denominator: "mean" sum(w_y), "batch_mean" N
    enter_stage2: Callable[[torch.nn.Module, bool, int], Stage2Start | None] = keep_classifier
    evaluate: Callable[[EvalContext, int], dict] = evaluate_splits
    stage2_cosine: bool = False  # stage 2 always restarts a cosine schedule (cRT's new classifier)
    needs_val: bool = False  # chooses something on the validation split, which must not be empty

    def loss(self, stage: int) -> str:
        return self.loss1 if stage == 1 else self.loss2

    def weights(self, stage: int) -> str:
        return self.weights1 if stage == 1 else self.weights2

    def reads(self, stage: int) -> frozenset:
        """The loss and weight settings (:data:`LOSS_SETTINGS`) that a stage reads: the others are
        not part of that stage's identity (a stage-2 tau does not retrain a shared stage 1)."""
        return frozenset(LOSSES[self.loss(stage)].reads) | frozenset(WEIGHT_READS.get(self.weights(stage), ()))

    def facts(self) -> dict:
        """What the run files record of the method, for readers that do not import the code."""
        return {"stage1": {"loss": self.loss1, "weights": self.weights1},
                "stage2": {"loss": self.loss2, "weights": self.weights2},
                "normed_classifier": self.normed_classifier, "doc": self.doc}


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
                       evaluate=evaluate_tau_norm, needs_val=True),
    "mislas": Method("ce", "none", "las", "none",
                     "MiSLAS (Zhong et al. 2021): stage 1 CE (with mixup when mixup_alpha > 0; the reference "
                     "uses 1); stage 2 retrains the classifier and a per-class logit scale on the frozen "
                     "backbone and BatchNorm, class-balanced, with label-aware smoothing (epsilon 0.3 for the "
                     "largest class to 0 for the smallest, concave), restarting a cosine at stage2_lr.",
                     enter_stage2=retrain_with_logit_scale, stage2_cosine=True),
    "weight_balancing": Method("ce", "none", "softmax_bce", "effective",
                               "Weight balancing (Alshammari et al. 2022): stage 1 CE (the reference tunes "
                               "weight_decay: 5e-3 at lr 0.01); stage 2 trains only the classifier with "
                               "weight decay 0.1, MaxNorm (threshold 0.1) and the softmax class-balanced BCE "
                               "(effective-number weights, beta=cb_beta, averaged over the N x C entries), "
                               "restarting a cosine at stage2_lr.",
                               normalization="batch_mean", enter_stage2=balance_classifier, stage2_cosine=True),
    "two_stage_ictta": Method("ce", "none", "ictta", "dynamic",
                              "This project's method: CE, then focal (or CE) with dynamic per-class weights."),
}


# ----------------------------------------------------------------------------------------------
# Losses, class weights and the learning-rate schedule of a stage (``cfg`` is a TwoStageConfig)

MISLAS_EPS_HEAD, MISLAS_EPS_TAIL = 0.3, 0.0  # label-aware smoothing of MiSLAS's CIFAR-10 stage 2 (concave)


def _ictta_loss(counts, cfg, device):
    """two_stage_ictta's stage-2 loss, per stage2_loss_type: focal (gamma=stage2_focal_gamma), CE, or
    the logit-adjusted loss (tau=la_tau), which the dynamic weights then scale per class."""
    if cfg.stage2_loss_type == "focal":
        return partial(losses.focal_loss, gamma=cfg.stage2_focal_gamma)
    if cfg.stage2_loss_type == "logit_adjust":
        return LOSSES["logit_adjust"].build(counts, cfg, device)
    return losses.focal_loss


def _balanced_softmax_loss(counts, cfg, device):
    log_counts = torch.tensor(counts, dtype=torch.float64).log().float().to(device)
    return partial(losses.logit_adjusted_loss, log_priors=log_counts, tau=1.0)


@dataclass(frozen=True)
class Loss:
    """A loss a Method names: ``build(counts, cfg, device)`` gives ``f(logits, y, weight, reduction)``;
    ``reads`` names the settings of ``cfg`` it reads."""
    build: Callable
    reads: tuple = ()


LOSSES = {
    "ce": Loss(lambda counts, cfg, device: losses.focal_loss),
    "focal": Loss(lambda counts, cfg, device: partial(losses.focal_loss, gamma=cfg.focal_gamma), ("focal_gamma",)),
    "ldam": Loss(lambda counts, cfg, device: partial(
        losses.ldam_loss, margins=losses.ldam_margins(counts, cfg.ldam_max_margin).to(device), scale=cfg.ldam_scale),
        ("ldam_max_margin", "ldam_scale")),
    "logit_adjust": Loss(lambda counts, cfg, device: partial(
        losses.logit_adjusted_loss, log_priors=losses.log_prior(counts).to(device), tau=cfg.la_tau), ("la_tau",)),
    "balanced_softmax": Loss(_balanced_softmax_loss),
    "ictta": Loss(_ictta_loss, ("stage2_loss_type", "stage2_focal_gamma", "la_tau")),
    "las": Loss(lambda counts, cfg, device: partial(
        losses.label_aware_smoothing_loss,
        epsilons=losses.label_aware_epsilons(counts, MISLAS_EPS_HEAD, MISLAS_EPS_TAIL).to(device))),
    "softmax_bce": Loss(lambda counts, cfg, device: losses.softmax_bce_loss),
}
WEIGHT_READS = {"effective": ("cb_beta",)}  # the settings each kind of static_weights reads
# The settings some loss or weighting reads: each is part of a stage's identity only where that stage reads it.
LOSS_SETTINGS = frozenset(name for reads in [*(loss.reads for loss in LOSSES.values()), *WEIGHT_READS.values()]
                          for name in reads)


def build_loss(name: str, counts, cfg, device="cpu"):
    """The loss function ``f(logits, y, weight, reduction)`` of a method's stage (:data:`LOSSES`);
    its constant tensors (margins, priors) live on ``device`` so the step loop copies nothing."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name].build(counts, cfg, device)


def static_weights(kind: str, counts, cfg) -> torch.Tensor | None:
    """Class weights that depend on the counts alone (``dynamic`` ones come from the run)."""
    if kind == "none":
        return None
    if kind == "inverse":
        return losses.inverse_frequency_weights(counts)
    if kind == "effective":
        return losses.effective_number_weights(counts, cfg.cb_beta)
    raise ValueError(f"unknown weights {kind!r}")


def lr_at_step(step: int, steps_per_epoch: int, cfg, stage: int) -> float:
    """Learning rate of global step ``step`` (0-based; global epoch ``e = step / steps_per_epoch``).

    * stage 1: ``stage1_lr``, linear warm-up ``min(1, (step + 1) / (warmup_epochs * steps_per_epoch))``;
    * stage 2: ``stage2_lr``; ``cosine`` within stage 2 when ``stage2_schedule="cosine"`` (and always
      for a method with ``stage2_cosine``, cRT's new classifier), else the run's ``schedule`` goes on;
    * ``cosine``: ``base * (1 + cos(pi * t / T)) / 2`` with ``t``, ``T`` the step and length within the stage;
    * ``step``: ``base`` times ``lr_decay`` from global epoch ``lr_milestones[0]`` on, ``lr_decay**2``
      from ``[1]`` on (0.01 and 0.0001 by default, LDAM-DRW's).
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
        decays = (epoch >= cfg.lr_milestones[0]) + (epoch >= cfg.lr_milestones[1])
        lr = base * cfg.lr_decay ** decays
    if stage == 1 and cfg.warmup_epochs > 0:
        lr *= min(1.0, (step + 1) / (cfg.warmup_epochs * steps_per_epoch))
    return lr
