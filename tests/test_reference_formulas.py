"""Our losses, class weights and classifiers against the reference implementations' formulas.

Each ``_ref_*`` function below re-implements one formula in the style of the code it follows (named
in the comment above it), and each test compares it with ours on seeded random inputs of several
shapes. What this pins:

* class weights: ``effective_number_weights`` = LDAM-DRW's ``per_cls_weights`` for Reweight/DRW
  (``(1 - beta) / (1 - beta^n)``, normalised to sum to C), the same as Cui et al.'s;
  ``inverse_frequency_weights`` is its ``beta -> 1`` limit;
* ``ldam_margins`` / ``ldam_loss`` = LDAM-DRW's ``LDAMLoss`` (``m_list`` and the scatter/where forward);
* ``focal_loss`` = LDAM-DRW's softmax ``FocalLoss`` (unweighted; with weights only at gamma = 0);
  ``"mean"`` with weights = ``nn.CrossEntropyLoss(weight=...)`` (LDAM-DRW's CE/DRW criterion);
* ``"batch_mean"`` = Cui et al.'s normalisation by the batch size (their softmax CB loss, and the
  identity ``sum(w_y l) / N``); their focal loss is a sigmoid one, a documented deviation, so only
  the normalisation is compared;
* ``logit_adjusted_loss`` = google-research's logit-adjusted loss, and with ``tau = 1`` = Balanced
  Softmax (Ren et al. 2020: CE on ``z + log n_c``);
* ``tau_normalize`` / ``tau_norm_logits`` = classifier-balancing's ``pnorm`` and bias-free dot product;
* ``model.NormedLinear`` = LDAM-DRW's ``NormedLinear`` (unit-norm class vectors at init, cosine forward).

References read: kaidic/LDAM-DRW (losses.py, cifar_train.py, models/resnet_cifar.py,
imbalance_cifar.py); richardaecn/class-balanced-loss (src/cifar_main.py);
vandit15/Class-balanced-loss-pytorch (class_balanced_loss.py); google-research/google-research
(logit_adjustment/utils.py, logit_adjustment/main.py); jiawei-ren/BalancedMetaSoftmax-Classification
(loss/BalancedSoftmaxLoss.py); facebookresearch/classifier-balancing (tau_norm.py).

Loss inputs are float32 (our losses upcast logits to float32, so float64 inputs would be compared at
float32 precision anyway); weights, priors and the tau-norm are compared in float64 where they are
computed in float64.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

import losses
import model

LOSS_SHAPES = [(1, 2), (7, 10), (128, 10), (50, 100)]  # (batch N, classes C)
SHAPE_IDS = [f"{n}x{c}" for n, c in LOSS_SHAPES]
GAMMAS = [0.0, 0.5, 1.0, 2.0]
F32 = dict(rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Inputs

# kaidic/LDAM-DRW imbalance_cifar.py (get_img_num_per_cls, imb_type 'exp')
def _lt_counts(num_classes: int, imb_factor: float = 0.01) -> list[int]:
    img_max = 50000 // num_classes
    return [int(img_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def _batch(n: int, c: int, seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float32) * scale
    target = torch.randint(c, (n,), generator=g)
    return logits, target


def _cosine_batch(n: int, c: int, seed: int = 0):
    """Logits in [-1, 1], as a NormedLinear gives them to the LDAM loss."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, generator=g) * 2 - 1, torch.randint(c, (n,), generator=g)


# ----------------------------------------------------------------------------------------------
# Reference formulas, each in its source's style

# kaidic/LDAM-DRW cifar_train.py (per_cls_weights for train_rule 'Reweight' / 'DRW')
def _ref_per_cls_weights(cls_num_list, beta):
    effective_num = 1.0 - np.power(beta, cls_num_list)
    per_cls_weights = (1.0 - beta) / np.array(effective_num)
    per_cls_weights = per_cls_weights / np.sum(per_cls_weights) * len(cls_num_list)
    return torch.FloatTensor(per_cls_weights)


# kaidic/LDAM-DRW losses.py (LDAMLoss.__init__: m_list)
def _ref_m_list(cls_num_list, max_m=0.5):
    m = 1.0 / np.sqrt(np.sqrt(cls_num_list))
    return torch.FloatTensor(m * (max_m / np.max(m)))


# kaidic/LDAM-DRW losses.py (LDAMLoss.forward; bool mask where the reference used uint8)
def _ref_ldam(x, target, m_list, s=30.0, weight=None, reduction="mean"):
    is_true = torch.zeros_like(x, dtype=torch.bool).scatter_(1, target.view(-1, 1), True)
    margin_per_row = (m_list[None, :] @ is_true.to(x.dtype).t()).view(-1, 1)
    shifted = torch.where(is_true, x - margin_per_row, x)
    return F.cross_entropy(s * shifted, target, weight=weight, reduction=reduction)


# kaidic/LDAM-DRW losses.py (focal_loss + FocalLoss.forward: p taken from the *weighted* CE)
def _ref_ldam_drw_focal(x, target, gamma, weight=None):
    ce = F.cross_entropy(x, target, reduction="none", weight=weight)
    p = torch.exp(-ce)
    return ((1 - p) ** gamma * ce).mean()


# richardaecn/class-balanced-loss src/cifar_main.py (_tower_fn, loss_type 'softmax':
# tf.losses.softmax_cross_entropy's default reduction SUM_BY_NONZERO_WEIGHTS)
def _ref_cb_softmax(labels, logits, class_weights):
    num_classes = logits.shape[1]
    one_hot = F.one_hot(labels, num_classes).to(logits.dtype)
    w = (class_weights[None, :].repeat(len(labels), 1) * one_hot).sum(1)
    ce = -(one_hot * F.log_softmax(logits, dim=1)).sum(1)
    return (w * ce).sum() / (w != 0).sum()


# google-research/google-research logit_adjustment/utils.py (build_loss_fn, use_la_loss=True)
def _ref_la_loss(labels, logits, base_probs, tau=1.0):
    adjusted = logits + torch.log(base_probs ** tau + 1e-12)
    return F.cross_entropy(adjusted, labels, reduction="none").mean(0)


# jiawei-ren/BalancedMetaSoftmax-Classification loss/BalancedSoftmaxLoss.py (balanced_softmax_loss)
def _ref_balanced_softmax(labels, logits, sample_per_class, reduction="mean"):
    spc = sample_per_class.type_as(logits).unsqueeze(0).expand(logits.shape[0], -1)
    return F.cross_entropy(logits + spc.log(), labels, reduction=reduction)


# facebookresearch/classifier-balancing tau_norm.py (pnorm)
def _ref_pnorm(weights, p):
    row_norms = torch.norm(weights, 2, 1)
    ws = weights.clone()
    for i in range(weights.size(0)):
        ws[i] = ws[i] / torch.pow(row_norms[i], p)
    return ws


# facebookresearch/classifier-balancing tau_norm.py (dotproduct_similarity: no bias)
def _ref_dotproduct(feats, weights):
    return torch.mm(feats, weights.t())


# kaidic/LDAM-DRW models/resnet_cifar.py (NormedLinear: weight stored as (in, out))
class _RefNormedLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


# ----------------------------------------------------------------------------------------------
# Class weights

@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
@pytest.mark.parametrize("counts", [_lt_counts(10, 0.01), _lt_counts(10, 0.1), _lt_counts(100, 0.01),
                                    [2, 3, 1, 2, 2]], ids=["c10-lt100", "c10-lt10", "c100-lt100", "tiny"])
def test_effective_number_weights_match_ldam_drw_per_cls_weights(counts, beta):
    got = losses.effective_number_weights(counts, beta)
    assert got.dtype == torch.float32
    assert_close(got, _ref_per_cls_weights(counts, beta), rtol=1e-6, atol=1e-7)
    assert got.double().sum().item() == pytest.approx(len(counts), rel=1e-6)


def test_effective_number_weights_beta0_is_uniform_as_in_drw_first_stage():
    # DRW trains with betas[0] = 0 before its re-weighting epoch: weights of exactly 1
    assert_close(losses.effective_number_weights(_lt_counts(10), 0.0), torch.ones(10))


@pytest.mark.parametrize("counts", [_lt_counts(10, 0.01), _lt_counts(100, 0.02)], ids=["c10", "c100"])
def test_inverse_frequency_weights_are_the_beta_to_1_limit(counts):
    got = losses.inverse_frequency_weights(counts)
    n = np.asarray(counts, dtype=np.float64)
    want = (1 / n) / (1 / n).sum() * len(n)
    assert_close(got, torch.as_tensor(want, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    assert got.double().sum().item() == pytest.approx(len(counts), rel=1e-6)
    # (1 - beta) / (1 - beta^n) -> 1 / n as beta -> 1 (relative gap about n (1 - beta) / 2)
    assert_close(got, _ref_per_cls_weights(counts, 1 - 1e-9), rtol=1e-5, atol=0.0)


# ----------------------------------------------------------------------------------------------
# LDAM

@pytest.mark.parametrize("max_m", [0.5, 0.3])
@pytest.mark.parametrize("counts", [_lt_counts(10), _lt_counts(100), [2, 3, 1, 2, 2]],
                         ids=["c10", "c100", "tiny"])
def test_ldam_margins_match_ldam_drw_m_list(counts, max_m):
    got = losses.ldam_margins(counts, max_margin=max_m)
    assert_close(got, _ref_m_list(counts, max_m), rtol=1e-6, atol=1e-7)
    assert got.max().item() == pytest.approx(max_m, rel=1e-6)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "drw"])
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_ldam_loss_matches_ldam_drw_forward(n, c, weighted, reduction):
    # the reference always reduces by F.cross_entropy's mean; "none"/"sum" pass the same reduction
    counts = _lt_counts(c)
    x, y = _cosine_batch(n, c, seed=n + c)
    m_list = _ref_m_list(counts)
    w = _ref_per_cls_weights(counts, 0.9999) if weighted else None
    got = losses.ldam_loss(x, y, w, reduction, margins=m_list, scale=30.0)
    assert_close(got, _ref_ldam(x, y, m_list, 30.0, w, reduction), rtol=1e-5, atol=1e-5)


def test_ldam_loss_shifts_only_the_true_class_logit():
    # a margin on a wrong class must not matter: change m for classes absent from the batch
    x, y = _cosine_batch(32, 10, seed=3)
    y = y % 5  # only classes 0..4 present
    m = _ref_m_list(_lt_counts(10))
    m_other = m.clone()
    m_other[5:] = 0.9
    assert_close(losses.ldam_loss(x, y, margins=m, reduction="none"),
                 losses.ldam_loss(x, y, margins=m_other, reduction="none"))


# ----------------------------------------------------------------------------------------------
# Focal loss, CE criterion, and the two normalisations

@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_focal_unweighted_matches_ldam_drw_focal(n, c, gamma):
    # Unweighted only: LDAM-DRW's FocalLoss puts the class weight inside the CE, so its p_t is
    # exp(-w_y * ce) for weighted inputs; ours takes the unweighted p_t (Lin et al.'s alpha_t form).
    x, y = _batch(n, c, seed=10 * n + c)
    got = losses.focal_loss(x, y, None, "mean", gamma=gamma)
    assert_close(got, _ref_ldam_drw_focal(x, y, gamma), **F32)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_batch_mean_without_weights_is_mean(gamma):
    x, y = _batch(128, 10, seed=1)
    assert_close(losses.focal_loss(x, y, None, "batch_mean", gamma=gamma),
                 losses.focal_loss(x, y, None, "mean", gamma=gamma), **F32)


@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_weighted_focal_gamma0_matches_ldam_drw_focal_as_batch_mean(n, c):
    # at gamma = 0 the p_t question vanishes; LDAM-DRW's FocalLoss then is mean_i(w_y ce_i), i.e.
    # divided by N, not by sum(w_y): our "batch_mean"
    x, y = _batch(n, c, seed=n * c)
    w = _ref_per_cls_weights(_lt_counts(c), 0.9999)
    got = losses.focal_loss(x, y, w, "batch_mean", gamma=0.0)
    assert_close(got, _ref_ldam_drw_focal(x, y, 0.0, weight=w), **F32)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_focal_gamma0_weighted_is_ldam_drw_ce_criterion(n, c, reduction):
    # cifar_train.py: nn.CrossEntropyLoss(weight=per_cls_weights) for CE with Reweight / DRW
    x, y = _batch(n, c, seed=n + 7 * c)
    counts = _lt_counts(c)
    got = losses.focal_loss(x, y, losses.effective_number_weights(counts, 0.9999), reduction, gamma=0.0)
    criterion = nn.CrossEntropyLoss(weight=_ref_per_cls_weights(counts, 0.9999), reduction=reduction)
    assert_close(got, criterion(x, y), **F32)


@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_batch_mean_gamma0_matches_class_balanced_softmax(n, c):
    x, y = _batch(n, c, seed=5 * n + c)
    w = losses.effective_number_weights(_lt_counts(c), 0.9999)
    got = losses.focal_loss(x, y, w, "batch_mean", gamma=0.0)
    assert_close(got, _ref_cb_softmax(y, x, w), **F32)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_batch_mean_is_weighted_sum_over_batch_size(n, c, gamma):
    # Cui et al. (richardaecn src/cifar_main.py focal_loss; vandit15 class_balanced_loss.py
    # focal_loss) divide the weighted sum by sum(one-hot labels) = N
    x, y = _batch(n, c, seed=n + 3 * c)
    w = losses.effective_number_weights(_lt_counts(c), 0.999)
    got = losses.focal_loss(x, y, w, "batch_mean", gamma=gamma)
    want = (w[y] * losses.focal_loss(x, y, None, "none", gamma=gamma)).sum() / n
    assert_close(got, want, **F32)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("n,c", [(7, 10), (128, 10), (50, 100)], ids=["7x10", "128x10", "50x100"])
def test_batch_mean_and_mean_differ_by_sum_of_weights_over_n(n, c, gamma):
    # a batch drawn from the long-tailed training distribution: mostly head classes, small w_y
    counts = _lt_counts(c)
    g = torch.Generator().manual_seed(2 * n + c)
    x = torch.randn(n, c, generator=g) * 3
    y = torch.multinomial(torch.tensor(counts, dtype=torch.float), n, replacement=True, generator=g)
    w = losses.effective_number_weights(counts, 0.9999)
    batch_mean = losses.focal_loss(x, y, w, "batch_mean", gamma=gamma)
    mean = losses.focal_loss(x, y, w, "mean", gamma=gamma)
    factor = w[y].sum() / n
    assert factor.item() < 0.9  # so the two normalisations really differ here
    assert_close(batch_mean, mean * factor, **F32)


# ----------------------------------------------------------------------------------------------
# Logit adjustment and Balanced Softmax

def test_log_prior_is_log_of_class_frequencies():
    # counts (3, 1): frequencies (3/4, 1/4)
    assert losses.log_prior([3, 1]).tolist() == pytest.approx([math.log(0.75), math.log(0.25)], rel=1e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_logit_adjusted_loss_matches_google_research(n, c, tau):
    x, y = _batch(n, c, seed=n + 11 * c)
    counts = _lt_counts(c)
    base_probs = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    got = losses.logit_adjusted_loss(x, y, log_priors=losses.log_prior(counts), tau=tau)
    # the reference's +1e-12 inside the log moves the loss by < 1e-7 relative for these priors
    assert_close(got, _ref_la_loss(y, x.double(), base_probs, tau).float(), **F32)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_balanced_softmax_equals_logit_adjusted_tau1(n, c, reduction):
    # log n_c and log(n_c / sum n) differ by a per-row constant: softmax is shift-invariant
    x, y = _batch(n, c, seed=n + 13 * c)
    counts = _lt_counts(c)
    got = losses.logit_adjusted_loss(x, y, None, reduction, log_priors=losses.log_prior(counts), tau=1.0)
    want = _ref_balanced_softmax(y, x, torch.tensor(counts), reduction)
    assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# tau-normalisation

TAU_SHAPES = [(2, 3), (10, 64), (100, 128)]  # classifier weight (C, D)


@pytest.mark.parametrize("c,d", TAU_SHAPES, ids=[f"{c}x{d}" for c, d in TAU_SHAPES])
def test_tau_normalize_matches_classifier_balancing_pnorm(c, d):
    g = torch.Generator().manual_seed(c * d)
    row_scale = 0.1 + 3 * torch.rand(c, 1, generator=g, dtype=torch.float64)  # unequal class norms
    weights = torch.randn(c, d, generator=g, dtype=torch.float64) * row_scale
    for p in np.linspace(0, 2, 21):
        assert_close(losses.tau_normalize(weights, p), _ref_pnorm(weights, p), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c,d", TAU_SHAPES, ids=[f"{c}x{d}" for c, d in TAU_SHAPES])
def test_tau_norm_logits_match_classifier_balancing_without_bias(c, d):
    g = torch.Generator().manual_seed(c + d)
    fc = nn.Linear(d, c).double()
    with torch.no_grad():
        fc.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
        fc.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    feats = torch.randn(17, d, generator=g, dtype=torch.float64).relu()
    for p in np.linspace(0, 2, 21):
        got = losses.tau_norm_logits(feats, fc.weight.detach(), p)
        assert_close(got, _ref_dotproduct(feats, _ref_pnorm(fc.weight.detach(), p)), rtol=1e-12, atol=1e-12)
    # tau = 0 is the trained layer with its bias dropped
    assert_close(losses.tau_norm_logits(feats, fc.weight.detach(), 0.0),
                 (fc(feats) - fc.bias).detach(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# NormedLinear

NORMED_SHAPES = [(64, 10), (3, 2), (128, 100)]  # (in_features, out_features)


@pytest.mark.parametrize("d,c", NORMED_SHAPES, ids=[f"{d}to{c}" for d, c in NORMED_SHAPES])
def test_normed_linear_class_vectors_have_unit_norm_at_init(d, c):
    with torch.random.fork_rng():
        torch.manual_seed(d + c)
        ours, ref = model.NormedLinear(d, c), _RefNormedLinear(d, c)
    assert ours.weight.shape == (c, d)
    assert_close(ours.weight.norm(dim=1), torch.ones(c), rtol=0, atol=1e-5)
    assert_close(ref.weight.norm(dim=0), torch.ones(c), rtol=0, atol=1e-5)  # the reference's columns


@pytest.mark.parametrize("init", ["unit", "uniform"])
@pytest.mark.parametrize("d,c", NORMED_SHAPES, ids=[f"{d}to{c}" for d, c in NORMED_SHAPES])
def test_normed_linear_forward_matches_ldam_drw(d, c, init):
    with torch.random.fork_rng():
        torch.manual_seed(3 * d + c)
        ours = model.NormedLinear(d, c) if init == "unit" else model.NormedLinear(d, c, init=init)
        ref = _RefNormedLinear(d, c)
    with torch.no_grad():
        ref.weight.copy_(ours.weight.t())
    x = torch.randn(9, d, generator=torch.Generator().manual_seed(d))
    with torch.no_grad():
        assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_normed_linear_uniform_init_keeps_the_old_uniform_rows():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = model.NormedLinear(64, 10, init="uniform")
    w = layer.weight.detach()
    assert w.abs().max() <= 1.0
    norms = w.norm(dim=1)
    assert (norms - 1).abs().min() > 0.5  # about sqrt(64 / 3) = 4.6, nowhere near 1
