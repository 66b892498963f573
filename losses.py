"""Losses and class weights for imbalanced classification.

Every loss takes ``(logits, target, weight=None, reduction="mean")`` with PyTorch's conventions for
class weights ``w``: ``"none"`` gives the per-sample values ``w_y * l``, ``"sum"`` their sum and
``"mean"`` the weighted mean ``sum(w_y * l) / sum(w_y)`` (what ``F.cross_entropy(weight=w)`` does,
and what LDAM-DRW's code trains with). Logits are upcast to float32 first, so the losses stay finite
under bf16 autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _reduce(loss: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
            reduction: str) -> torch.Tensor:
    """Apply class weights ``weight[target]`` to per-sample ``loss`` and reduce (module docstring)."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction={reduction!r}; valid: none, mean, sum")
    w = None if weight is None else weight.to(loss.device)[target]
    if w is not None:
        loss = loss * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.mean() if w is None else loss.sum() / w.sum()


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

DYNAMIC_MODES = ("loss", "val_loss", "val_error", "none")


class DynamicClassWeights:
    """Per-class weights recomputed every epoch from a per-class statistic ``x`` (larger = harder).

    ``dynamic_mode`` names the statistic: ``loss`` (mean training cross-entropy per class over the
    epoch), ``val_loss`` (mean cross-entropy per class on the validation split), ``val_error``
    (1 - per-class recall on the validation split), or ``none`` (uniform weights of 1, the control).

    Each update smooths the statistic over epochs with an EMA and maps it into the weight range::

        s_t = x_1                                        (first update)
        s_t = ema_alpha * s_{t-1} + (1 - ema_alpha) * x_t
        w_c = min_weight + (max_weight - min_weight) * (s_c - min_k s_k) / (max_k s_k - min_k s_k)

    so the hardest class gets ``max_weight`` and the easiest ``min_weight``. When all classes have the
    same statistic, every weight is ``min_weight``; so is it when there is no statistic yet
    (``stat=None``: no epoch before the first stage-2 one, as with ``stage1_epochs=0``).
    """

    def __init__(self, num_classes: int, min_weight: float = 1.0, max_weight: float = 8.0,
                 ema_alpha: float = 0.8, mode: str = "loss"):
        if mode not in DYNAMIC_MODES:
            raise ValueError(f"dynamic_mode={mode!r}; valid: {', '.join(DYNAMIC_MODES)}")
        validate_weight_range(min_weight, max_weight)
        if not 0 <= ema_alpha < 1:
            raise ValueError(f"ema_alpha={ema_alpha!r} must lie in [0, 1)")
        self.num_classes, self.mode = num_classes, mode
        self.min_weight, self.max_weight, self.ema_alpha = float(min_weight), float(max_weight), ema_alpha
        self.smoothed: torch.Tensor | None = None  # s_t, float64 on the CPU
        self.weights = torch.ones(num_classes)

    def update(self, stat: torch.Tensor | None) -> torch.Tensor:
        """Fold in this epoch's statistic and return the new weights (float32, CPU)."""
        if self.mode == "none":
            return self.weights
        if stat is None and self.smoothed is None:
            self.weights = torch.full((self.num_classes,), self.min_weight)
            return self.weights
        x = torch.as_tensor(stat, dtype=torch.float64).cpu()
        if x.shape != (self.num_classes,) or not torch.isfinite(x).all():
            raise FloatingPointError(f"per-class statistic for dynamic weights is not a finite "
                                     f"vector of {self.num_classes}: {x.tolist()}")
        a = self.ema_alpha
        self.smoothed = x.clone() if self.smoothed is None else a * self.smoothed + (1 - a) * x
        s = self.smoothed
        span = s.max() - s.min()
        unit = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
        self.weights = (self.min_weight + (self.max_weight - self.min_weight) * unit).float()
        return self.weights

    def state_dict(self) -> dict:
        return {"smoothed": self.smoothed, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.smoothed, self.weights = state["smoothed"], state["weights"]


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
