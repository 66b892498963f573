"""Losses and class weights for imbalanced classification.

Every loss takes ``(logits, target, weight=None, reduction="mean")``. With class weights ``w``,
``"none"`` gives the per-sample values ``w_y * l``, ``"sum"`` their sum, and the two means differ
only in the denominator (:data:`NORMALIZATIONS`):

* ``"mean"``: ``sum(w_y * l) / sum(w_y)``, what ``F.cross_entropy(weight=w)`` does and what LDAM-DRW's
  code trains DRW, LDAM-DRW and re-weighting with;
* ``"batch_mean"``: ``sum(w_y * l) / N``, what Cui et al.'s class-balanced loss divides by.

Logits are upcast to float32 first (the models already compute their classifier in float32, see
model.py), so the losses are float32 under bf16 autocast.

Which reference each loss matches:

* :func:`focal_loss`: softmax focal loss of Lin et al. 2017 (as LDAM-DRW's ``FocalLoss`` for
  unweighted inputs; the class weight scales the loss, it does not enter ``p_t``).
* ``cb_focal`` = :func:`focal_loss` with :func:`effective_number_weights` and ``"batch_mean"``:
  Cui et al. 2019's weights and normalisation. **Deviation:** their CIFAR results use a *sigmoid*
  (one-vs-all) focal loss; ours is the softmax focal loss above.
* :func:`ldam_loss`: LDAM-DRW's ``LDAMLoss`` (margins on the true class only, then scale ``s``).
* :func:`logit_adjusted_loss`: Menon et al. 2021's logit-adjusted cross-entropy; balanced softmax
  (Ren et al. 2020) is its ``tau = 1`` case up to a constant shift.
* :func:`tau_norm_logits`: classifier-balancing's ``tau_norm`` (``pnorm``: bias-free rows
  ``w_c / ||w_c||^tau``).
* :func:`label_aware_smoothing_loss` with :func:`label_aware_epsilons`: MiSLAS's label-aware
  smoothing (Zhong et al. 2021), as its code computes it.
* :func:`mixup_loss`: the mixup objective (Zhang et al. 2018) over any of these losses.
* :func:`softmax_bce_loss`: the ``"softmax"`` class-balanced loss that weight balancing's second
  stage trains with (Alshammari et al. 2022, from Cui et al.'s ``CB_loss``).
* :func:`max_norm_`: weight balancing's MaxNorm projection of the classifier rows.

docs/reference_recipes.md gives each method's reference and settings.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


NORMALIZATIONS = ("mean", "batch_mean")  # the two means (module docstring)
REDUCTIONS = ("none", "sum") + NORMALIZATIONS


def loss_denominator(target: torch.Tensor, weight: torch.Tensor | None, normalization: str):
    """What a weighted loss sum is divided by: ``sum(w_y)`` for ``"mean"``, ``N`` for ``"batch_mean"``
    (and for ``"mean"`` without weights)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if weight is None or normalization == "batch_mean":
        return float(len(target))
    return weight.to(target.device)[target].sum()


def _reduce(loss: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
            reduction: str) -> torch.Tensor:
    """Apply class weights ``weight[target]`` to per-sample ``loss`` and reduce (module docstring)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}; valid: {', '.join(REDUCTIONS)}")
    if weight is not None:
        loss = loss * weight.to(loss.device)[target]
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / loss_denominator(target, weight, reduction)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
               reduction: str = "mean", gamma: float = 0.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): ``-alpha_y (1 - p_t)^gamma log p_t``.

    ``p_t`` is the *unweighted* softmax probability of the true class; the class weight
    ``alpha_y = weight[target]`` only scales the result. With ``gamma = 0`` this is weighted
    cross-entropy, ``F.cross_entropy(logits, target, weight)`` (for every reduction). ``1 - p_t`` is
    computed as ``-expm1(log p_t)`` and clamped away from 0, so loss and gradient stay finite for
    any gamma >= 0 even when ``p_t`` rounds to 1.
    """
    logp_t = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    loss = -logp_t
    if gamma:
        one_minus_p = (-torch.expm1(logp_t)).clamp_min(torch.finfo(torch.float32).tiny)
        loss = one_minus_p.pow(gamma) * loss
    return _reduce(loss, target, weight, reduction)


def inverse_frequency_weights(counts) -> torch.Tensor:
    """``w_c = (1 / n_c) / sum_k(1 / n_k) * C``: inverse class frequency, mean weight 1."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = 1.0 / n
    return (w / w.sum() * len(n)).float()


def effective_number_weights(counts, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights (Cui et al. 2019): ``w_c = (1 - beta) / (1 - beta^n_c)``,
    normalised to mean 1. ``beta -> 1`` approaches inverse frequency, ``beta = 0`` is uniform."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta={beta!r} must lie in [0, 1)")
    n = torch.as_tensor(counts, dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - torch.pow(beta, n))
    return (w / w.sum() * len(n)).float()


# ----------------------------------------------------------------------------------------------
# Dynamic class weights

DYNAMIC_MODES = ("loss", "val_loss", "val_error", "train_eval_loss", "none")
WEIGHT_MAPS = ("minmax", "power")  # how the smoothed statistic becomes weights (DynamicClassWeights)


class DynamicClassWeights:
    """Per-class weights recomputed every epoch from a per-class statistic ``x`` (larger = harder).

    ``dynamic_mode`` names the statistic: ``loss`` (mean training cross-entropy per class over the
    epoch), ``val_loss`` (mean cross-entropy per class on the held-out *statistic* split), ``val_error``
    (1 - per-class recall on that split), ``train_eval_loss`` (mean cross-entropy per class of the
    training images after the epoch, in eval mode and without augmentation) or ``none`` (uniform
    weights of 1, the control). The statistic split is balanced and disjoint from training,
    validation and test (``data_loader.make_split``), so the validation split that selects epochs
    and settings never feeds the weights. ``train_eval_loss`` is what ``train_eval.evaluate(model,
    train_x, train_y, ...)["class_loss"]`` returns on the un-augmented training images (evaluate
    gives each class's mean cross-entropy on whatever images it is handed). It still falls as the
    network memorises its training images; what it drops is the augmentation and the drift within
    the epoch that ``loss`` averages over. Only the held-out statistics measure what memorising hides.

    Each update smooths the statistic over epochs with an EMA::

        s_t = x_1                                        (first update)
        s_t = ema_alpha * s_{t-1} + (1 - ema_alpha) * x_t

    and ``weight_map`` maps it into weights. ``"minmax"`` (the default, the seed's map)::

        u_c = (1 - prior_blend) * unit(s)_c + prior_blend * unit(1 / n)_c
        w_c = min_weight + (max_weight - min_weight) * u_c

    with ``unit(v)_c = (v_c - min_k v_k) / (max_k v_k - min_k v_k)``, so with ``prior_blend = 0`` (the
    default) the hardest class gets ``max_weight`` and the easiest ``min_weight``, however small the
    spread. ``prior_blend`` mixes in the class counts ``n`` (inverse frequency, as DRW's weights): 1
    gives weights linear in ``1 / n_c`` from ``min_weight`` (the largest class) to ``max_weight`` (the
    rarest). As ``w`` is affine in ``u``, this is also the same blend of the two maps' weights.

    ``"power"`` keeps the statistic's magnitude: a class twice as hard weighs ``2^map_power`` times as
    much (up to the clip), and classes that do about equally well get about equal weights. With the
    training distribution ``p_c = n_c / sum_k n_k``::

        s_bar = sum_c p_c s_c                            (mean statistic of a training image)
        r_c   = (s_c / s_bar)^map_power
        u_c   = r_c / sum_k p_k r_k                      (normalised: sum_c p_c u_c = 1)
        v_c   = (1 - prior_blend) * u_c + prior_blend * n_bar / n_c,   n_bar = sum_k n_k / C
        w_c   = clip(v_c, min_weight, max_weight)        (normalise first, then clip)

    (:func:`power_weights` gives ``u``.) The prior ``n_bar / n_c`` is this map applied to ``x = 1 / n``
    with power 1: inverse frequency, linear in ``1 / n`` and also of mean 1 under ``p``, so ``v`` is
    a blend in weight space that keeps ``sum_c p_c v_c = 1``; ``prior_blend = 1`` gives
    ``clip(n_bar / n_c)``. ``map_power = 0`` gives uniform weights (a control).

    The bounds are weights on the scale where the average training image weighs 1 (before the clip).
    With ``min_weight = 1`` (the default) no class weighs less than that average: classes easier
    than it get 1, harder ones their ratio up to ``max_weight``. Under a long tail the average is
    dominated by the head, so this floors the head and spreads the tail: one run's per-class
    validation errors after stage 1 (resnet20 long_tail, 0.05 0.04 0.24 ... 0.94) give
    ``u`` = 0.32 0.26 1.56 ... 6.09 and weights 1 1 1.56 ... 6.09. Bounds relative to the smallest
    weight (``min_weight * u / min u``) were rejected: the easiest class's statistic is near 0 and
    noisy, so ratios to it blow up (7 of that run's 10 classes would sit at ``max_weight``). Set
    ``min_weight < 1`` to let classes easier than the average weigh less. The power map needs the
    counts and a statistic ``s >= 0`` (a loss or an error); a negative one is a ``ValueError``.

    A spread within numerical noise is no signal: when ``max s - min s <= SPREAD_ATOL + SPREAD_RTOL *
    max |s|`` (:meth:`has_spread`), ``unit(s)`` is 0 (minmax) and ``u`` is 1 (power) for every class,
    so equal statistics give equal weights: ``min_weight`` (minmax; [1, 1, 1 + 1e-7] gives uniform
    weights, not [1, 1, 8]) or ``clip(1)`` (power), blended with the prior when ``prior_blend > 0``.
    This covers ``s_bar = 0``, which happens only when every ``s_c = 0``. With no statistic yet
    (``stat=None``: no epoch before the first stage-2 one, as with ``stage1_epochs=0``) every weight
    is that uniform value, without the prior (:meth:`uniform_weight`). A NaN or infinite statistic
    (a class the statistic split lacks) is refused with a :class:`FloatingPointError` rather than
    read as an easy or a hard class.
    """
    SPREAD_ATOL = 1e-8  # in the statistic's units (a mean cross-entropy, or an error rate)
    SPREAD_RTOL = 1e-6  # relative to the largest |s|; float32 losses carry ~1e-7 relative noise

    def __init__(self, num_classes: int, min_weight: float = 1.0, max_weight: float = 8.0,
                 ema_alpha: float = 0.8, mode: str = "loss", prior_blend: float = 0.0, counts=None,
                 weight_map: str = "minmax", map_power: float = 1.0):
        validate_dynamic_settings(mode, weight_map, map_power, min_weight, max_weight, ema_alpha, prior_blend)
        n = None if counts is None else torch.as_tensor(counts, dtype=torch.float64).cpu()
        needs_counts = bool(prior_blend) or weight_map == "power"
        if needs_counts and (n is None or n.shape != (num_classes,) or not bool((n > 0).all())):
            why = f"prior_blend={prior_blend!r}" if prior_blend else f"weight_map={weight_map!r}"
            raise ValueError(f"{why} needs the {num_classes} class counts (each > 0); got {counts!r}")
        self.num_classes, self.mode, self.weight_map = num_classes, mode, weight_map
        self.min_weight, self.max_weight, self.ema_alpha = float(min_weight), float(max_weight), ema_alpha
        self.prior_blend, self.map_power = float(prior_blend), float(map_power)
        self.counts = n if weight_map == "power" else None
        self.prior = None if not prior_blend else self._prior(n)  # the prior, in the map's own space
        self.smoothed: torch.Tensor | None = None  # s_t, float64 on the CPU
        self.weights = torch.ones(num_classes)

    def _prior(self, n: torch.Tensor) -> torch.Tensor:
        """``unit(1 / n)`` (minmax) or ``n_bar / n`` (power), as in the class docstring."""
        return self._unit(1.0 / n) if self.weight_map == "minmax" else power_weights(1.0 / n, n, 1.0)

    def update(self, stat: torch.Tensor | None) -> torch.Tensor:
        """Fold in this epoch's statistic and return the new weights (float32, CPU)."""
        if self.mode == "none":
            return self.weights
        if stat is None and self.smoothed is None:
            self.weights = torch.full((self.num_classes,), self.uniform_weight())
            return self.weights
        x = torch.as_tensor(stat, dtype=torch.float64).cpu()
        if x.shape != (self.num_classes,) or not torch.isfinite(x).all():
            raise FloatingPointError(f"per-class statistic for dynamic weights is not a finite "
                                     f"vector of {self.num_classes}: {x.tolist()}")
        if self.weight_map == "power" and (x < 0).any():
            raise ValueError(f"weight_map='power' needs a statistic >= 0 (a loss or an error): {x.tolist()}")
        a = self.ema_alpha
        self.smoothed = x.clone() if self.smoothed is None else a * self.smoothed + (1 - a) * x
        self.weights = self._map(self.smoothed).float()
        return self.weights

    def _map(self, s: torch.Tensor) -> torch.Tensor:
        """The smoothed statistic's weights under ``weight_map`` (class docstring), in float64."""
        if self.weight_map == "minmax":
            unit = self._unit(s)
            if self.prior_blend:
                unit = (1 - self.prior_blend) * unit + self.prior_blend * self.prior
            return self.min_weight + (self.max_weight - self.min_weight) * unit
        v = power_weights(s, self.counts, self.map_power)
        if self.prior_blend:
            v = (1 - self.prior_blend) * v + self.prior_blend * self.prior
        return v.clamp(self.min_weight, self.max_weight)

    def uniform_weight(self) -> float:
        """Every class's weight when all do equally well: ``min_weight`` (minmax), ``clip(1)`` (power)."""
        if self.weight_map == "minmax":
            return self.min_weight
        return min(max(1.0, self.min_weight), self.max_weight)

    @classmethod
    def has_spread(cls, v: torch.Tensor) -> bool:
        """Whether ``max v - min v > SPREAD_ATOL + SPREAD_RTOL * max |v|`` (more than noise)."""
        return bool(v.max() - v.min() > cls.SPREAD_ATOL + cls.SPREAD_RTOL * v.abs().max())

    @classmethod
    def _unit(cls, v: torch.Tensor) -> torch.Tensor:
        """``(v - min v) / (max v - min v)``; zeros when the spread is within noise (docstring)."""
        span = v.max() - v.min()
        return (v - v.min()) / span if cls.has_spread(v) else torch.zeros_like(v)

    def state_dict(self) -> dict:
        return {"smoothed": self.smoothed, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        """From :meth:`state_dict`, on the CPU whatever ``map_location`` loaded it to (a CUDA run's
        checkpoint is loaded onto its GPU, but :meth:`update` folds in CPU statistics)."""
        smoothed = state["smoothed"]
        self.smoothed = None if smoothed is None else smoothed.cpu()
        self.weights = state["weights"].cpu()


def power_weights(stat, counts, power: float = 1.0) -> torch.Tensor:
    """``u_c = r_c / sum_k p_k r_k`` with ``r_c = (s_c / s_bar)^power``, ``s_bar = sum_k p_k s_k`` and
    ``p = counts / sum(counts)``: weights that follow the statistic's magnitude, of mean 1 under the
    training distribution (float64). All ones when the spread of ``s`` is within noise
    (:meth:`DynamicClassWeights.has_spread`), which covers ``s_bar = 0``. Needs ``s >= 0``, counts > 0."""
    s = torch.as_tensor(stat, dtype=torch.float64)
    if not DynamicClassWeights.has_spread(s):
        return torch.ones_like(s)
    p = torch.as_tensor(counts, dtype=torch.float64)
    p = p / p.sum()
    r = (s / (p * s).sum()) ** power  # s_bar > 0 here: some s_c > min s >= 0, and every p_c > 0
    return r / (p * r).sum()


def validate_dynamic_settings(mode: str, weight_map: str, map_power: float, min_weight: float,
                              max_weight: float, ema_alpha: float, prior_blend: float) -> None:
    """The checks of :class:`DynamicClassWeights`' settings that need no class counts."""
    if mode not in DYNAMIC_MODES:
        raise ValueError(f"dynamic_mode={mode!r}; valid: {', '.join(DYNAMIC_MODES)}")
    if weight_map not in WEIGHT_MAPS:
        raise ValueError(f"weight_map={weight_map!r}; valid: {', '.join(WEIGHT_MAPS)}")
    validate_weight_range(min_weight, max_weight)
    if not 0 <= ema_alpha < 1:
        raise ValueError(f"ema_alpha={ema_alpha!r} must lie in [0, 1)")
    if not 0 <= prior_blend <= 1:
        raise ValueError(f"prior_blend={prior_blend!r} must lie in [0, 1]")
    if not isinstance(map_power, (int, float)) or not math.isfinite(map_power) or map_power < 0:
        raise ValueError(f"map_power={map_power!r} must be a finite number >= 0")


def validate_weight_range(min_weight: float, max_weight: float) -> None:
    for name, v in (("min_weight", min_weight), ("max_weight", max_weight)):
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}={v!r} must be a finite number > 0")
    if min_weight > max_weight:
        raise ValueError(f"min_weight={min_weight!r} > max_weight={max_weight!r}; need min <= max")


# ----------------------------------------------------------------------------------------------
# Losses of the comparison methods

def ldam_margins(counts, max_margin: float = 0.5) -> torch.Tensor:
    """LDAM margins (Cao et al. 2019): ``m_c proportional to n_c^(-1/4)``, the largest equal to ``max_margin``."""
    m = torch.as_tensor(counts, dtype=torch.float64).pow(-0.25)
    return (m * (max_margin / m.max())).float()


def ldam_loss(logits, target, weight=None, reduction: str = "mean", *, margins: torch.Tensor,
              scale: float = 30.0):
    """LDAM loss (Cao et al. 2019): cross-entropy of ``scale * (z - m_y e_y)``: the true class's
    logit is lowered by its margin ``m_y`` before scaling. Meant for cosine logits in [-1, 1]
    (a normalised classifier, as in the paper's ResNet-32). Zero margins with scale 1 is CE."""
    z = logits.float()
    z = z - F.one_hot(target, z.shape[1]).to(z.dtype) * margins.to(z.device)[None, :]
    return _reduce(F.cross_entropy(scale * z, target, reduction="none"), target, weight, reduction)


def log_prior(counts) -> torch.Tensor:
    n = torch.as_tensor(counts, dtype=torch.float64)
    return (n / n.sum()).log().float()


def logit_adjusted_loss(logits, target, weight=None, reduction: str = "mean", *,
                        log_priors: torch.Tensor, tau: float = 1.0):
    """Logit-adjusted loss (Menon et al. 2021): cross-entropy of ``z_c + tau * log pi_c``, with
    ``pi`` the training class prior. Predictions use the raw logits. Uniform priors give CE.
    With ``tau = 1`` this equals Balanced Softmax (Ren et al. 2020), whose shift ``log n_c`` differs
    from ``log pi_c`` by a constant."""
    z = logits.float() + tau * log_priors.to(logits.device)[None, :]
    return focal_loss(z, target, weight, reduction)


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """tau-normalisation (Kang et al. 2020): each class's classifier row ``w_c / ||w_c||^tau``.
    ``tau = 0`` leaves the weights unchanged; ``tau = 1`` gives unit-norm rows."""
    return weight / weight.norm(dim=1, keepdim=True).pow(tau)


def tau_norm_logits(features: torch.Tensor, weight: torch.Tensor, tau: float) -> torch.Tensor:
    """Logits of the tau-normalised classifier: ``z_c = <f, w_c / ||w_c||^tau>``, with no bias, as
    classifier-balancing's ``tau_norm`` computes them (the trained bias is dropped)."""
    return features @ tau_normalize(weight, tau).t()


# ----------------------------------------------------------------------------------------------
# MiSLAS: label-aware smoothing; mixup

LAS_SHAPES = ("concave", "linear", "convex", "exp")


def label_aware_epsilons(counts, eps_head: float, eps_tail: float, shape: str = "concave",
                         power: float | None = None) -> torch.Tensor:
    """Per-class smoothing of label-aware smoothing (MiSLAS): ``eps_c = f(n_c)`` from
    ``eps_head`` (the largest class, MiSLAS's ``smooth_head`` = epsilon_1) down to ``eps_tail``
    (the smallest, ``smooth_tail`` = epsilon_K). With ``u_c = (n_c - n_K) / (n_1 - n_K)`` in [0, 1]::

        concave: eps_K + (eps_1 - eps_K) * sin(pi/2 * u)
        linear:  eps_K + (eps_1 - eps_K) * u
        convex:  eps_1 + (eps_1 - eps_K) * sin(3pi/2 + pi/2 * u)   (= eps_1 - (eps_1 - eps_K) cos(pi/2 u))
        exp:     eps_K + (eps_1 - eps_K) * u^power

    MiSLAS builds its loss without naming a shape, so its runs use ``concave``. Equal counts leave
    ``u`` undefined (the reference divides 0 by 0) and raise ``ValueError``.
    """
    if shape not in LAS_SHAPES:
        raise ValueError(f"shape={shape!r}; valid: {', '.join(LAS_SHAPES)}")
    if shape == "exp" and power is None:
        raise ValueError("shape='exp' needs a power")
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.max() == n.min():
        raise ValueError(f"label-aware smoothing needs unequal class counts, got {n.tolist()}")
    u = (n - n.min()) / (n.max() - n.min())
    span = eps_head - eps_tail
    if shape == "concave":
        eps = eps_tail + span * torch.sin(u * math.pi / 2)
    elif shape == "linear":
        eps = eps_tail + span * u
    elif shape == "convex":
        eps = eps_head + span * torch.sin(1.5 * math.pi + u * math.pi / 2)
    else:
        eps = eps_tail + span * u.pow(power)
    return eps.float()


def label_aware_smoothing_loss(logits, target, weight=None, reduction: str = "mean", *,
                               epsilons: torch.Tensor):
    """Cross-entropy against the smoothed target ``q = (1 - eps_y) onehot(y) + eps_y / C``:

        l = (1 - eps_y) * (-log p_y) + eps_y * mean_c(-log p_c)

    with ``eps = epsilons`` (:func:`label_aware_epsilons`). The smoothing mass is spread over all C
    classes, the true one included (MiSLAS's code: its ``smooth_loss`` is the mean over classes), so
    the true class's target is ``1 - eps_y + eps_y / C``, not ``1 - eps_y``. Zero epsilons give CE.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    eps = epsilons.to(logp.device)[target]
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    loss = (1.0 - eps) * nll + eps * -logp.mean(dim=1)
    return _reduce(loss, target, weight, reduction)


def mixup_loss(loss_fn, logits, target_a, target_b, lam: float, weight=None,
               normalization: str = "mean"):
    """The mixup objective (Zhang et al. 2018), as MiSLAS's ``mixup_criterion`` forms it:

        lam * L(z, y_a) + (1 - lam) * L(z, y_b),   L(z, y) = loss_fn(z, y, w, "sum") / D(y)

    with ``D`` = :func:`loss_denominator` under ``normalization``: each term is a weighted mean under
    its own labels' class weights, as ``criterion(pred, y_a)`` is with a weighted criterion.
    """
    def term(y):
        return loss_fn(logits, y, weight, "sum") / loss_denominator(y, weight, normalization)
    return lam * term(target_a) + (1.0 - lam) * term(target_b)


# ----------------------------------------------------------------------------------------------
# Weight balancing: the softmax class-balanced loss; MaxNorm

def softmax_bce_loss(logits, target, weight=None, reduction: str = "mean"):
    """Binary cross-entropy of the softmax probabilities against the one-hot target, averaged
    over the C classes: ``l = -(1/C) sum_c [t_c log p_c + (1 - t_c) log(1 - p_c)]``, ``p = softmax(z)``.

    This is the ``"softmax"`` variant of ``CB_loss`` that weight balancing's stage 2 uses: there
    ``F.binary_cross_entropy(p, onehot, weight=w_y)`` averages over all N x C entries, which is
    this loss with :func:`effective_number_weights` (beta 0.9999) and ``reduction="batch_mean"``.
    ``log(1 - p_c)`` is computed as ``log(-expm1(log p_c))`` and clamped away from ``-inf`` (torch's
    BCE clamps the log at -100; here the floor is log of float32's smallest normal, about -87).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    log_not_p = torch.log((-torch.expm1(logp)).clamp_min(torch.finfo(torch.float32).tiny))
    onehot = F.one_hot(target, logp.shape[1]).to(logp.dtype)
    loss = -(onehot * logp + (1.0 - onehot) * log_not_p).mean(dim=1)
    return _reduce(loss, target, weight, reduction)


def max_norm_radius(weight: torch.Tensor, thresh: float) -> float:
    """Weight balancing's MaxNorm radius, relative to the rows it starts from:
    ``r = min_c ||w_c|| + thresh * (max_c ||w_c|| - min_c ||w_c||)`` (its ``setPerLayerThresh``,
    taken once, from the stage-1 classifier, before stage 2 trains)."""
    norms = weight.detach().norm(dim=1)
    return float(norms.min() + thresh * (norms.max() - norms.min()))


@torch.no_grad()
def max_norm_(weight: torch.Tensor, radius: float) -> torch.Tensor:
    """MaxNorm projection in place: each class row ``w_c`` with ``||w_c|| > radius`` becomes
    ``w_c * radius / ||w_c||`` (same direction, norm ``radius``); rows within the ball are untouched.
    Returns ``weight``."""
    norms = weight.norm(dim=1)
    over = norms > radius
    weight[over] *= (radius / norms[over])[:, None]
    return weight
