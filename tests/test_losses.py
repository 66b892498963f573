"""Focal loss, static class weights, dynamic class weights, LDAM, the logit-adjusted loss,
tau-normalisation and the comparison methods' losses (label-aware smoothing, mixup, softmax BCE,
MaxNorm), against hand-computed values and against the reference implementations' formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import example, given, settings, strategies as st
from torch.testing import assert_close

from losses import (DYNAMIC_MODES, DynamicClassWeights, effective_number_weights, focal_loss,
                    inverse_frequency_weights, label_aware_epsilons, label_aware_smoothing_loss, ldam_loss,
                    ldam_margins, log_prior, logit_adjusted_loss, max_norm_, max_norm_radius, mixup_loss,
                    power_weights, softmax_bce_loss, tau_norm_logits, tau_normalize)

REDUCTIONS = ("none", "mean", "sum")


def _batch(seed=0, n=16, C=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g) * 3, torch.randint(C, (n,), generator=g)


# ----------------------------------------------------------------------------------------------
# Reference formulas. Each ``_ref_*`` function re-implements one formula in the style of the code
# named in the comment above it; the tests that use it compare it with ours on seeded random inputs
# of several shapes. References read: kaidic/LDAM-DRW (losses.py, cifar_train.py, imbalance_cifar.py);
# richardaecn/class-balanced-loss (src/cifar_main.py); vandit15/Class-balanced-loss-pytorch
# (class_balanced_loss.py); google-research/google-research (logit_adjustment/utils.py, main.py);
# jiawei-ren/BalancedMetaSoftmax-Classification (loss/BalancedSoftmaxLoss.py);
# facebookresearch/classifier-balancing (tau_norm.py). Cui et al.'s focal loss is a sigmoid one, a
# documented deviation, so only their normalisation is compared. Loss inputs are float32 (our losses
# upcast logits to float32 anyway); weights, priors and the tau-norm are compared in float64 where
# they are computed in float64. (LDAM-DRW's NormedLinear: test_model.py.)

LOSS_SHAPES = [(1, 2), (7, 10), (128, 10), (50, 100)]  # (batch N, classes C)
SHAPE_IDS = [f"{n}x{c}" for n, c in LOSS_SHAPES]
GAMMAS = [0.0, 0.5, 1.0, 2.0]
F32 = dict(rtol=1e-5, atol=1e-6)


# kaidic/LDAM-DRW imbalance_cifar.py (get_img_num_per_cls, imb_type 'exp')
def _lt_counts(num_classes: int, imb_factor: float = 0.01) -> list[int]:
    img_max = 50000 // num_classes
    return [int(img_max * imb_factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]


def _cosine_batch(n: int, c: int, seed: int = 0):
    """Logits in [-1, 1], as a NormedLinear gives them to the LDAM loss."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, generator=g) * 2 - 1, torch.randint(c, (n,), generator=g)


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


# ----------------------------------------------------------------------------------------------
# Focal loss

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "drw"])
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_focal_gamma0_is_ldam_drw_ce_criterion(n, c, weighted, reduction):
    """gamma = 0 is cross-entropy: cifar_train.py's nn.CrossEntropyLoss(weight=per_cls_weights) for
    CE with Reweight / DRW, and without weights; every reduction."""
    x, y = _batch(n + 7 * c, n, c)
    counts = _lt_counts(c)
    w = effective_number_weights(counts, 0.9999) if weighted else None
    criterion = nn.CrossEntropyLoss(weight=_ref_per_cls_weights(counts, 0.9999) if weighted else None,
                                    reduction=reduction)
    assert_close(focal_loss(x, y, w, reduction, gamma=0.0), criterion(x, y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_focal_unweighted_matches_ldam_drw_focal(n, c, gamma):
    # Unweighted only: LDAM-DRW's FocalLoss puts the class weight inside the CE, so its p_t is
    # exp(-w_y * ce) for weighted inputs; ours takes the unweighted p_t (Lin et al.'s alpha_t form).
    x, y = _batch(10 * n + c, n, c)
    got = focal_loss(x, y, None, "mean", gamma=gamma)
    assert_close(got, _ref_ldam_drw_focal(x, y, gamma), **F32)


def test_focal_against_hand_computed_value():
    # logits (2, 0, -1), true class 0, gamma 2: p_t = e^2 / (e^2 + 1 + e^-1)
    p = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    want = -((1 - p) ** 2) * math.log(p)
    got = focal_loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([0]), gamma=2.0)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # true class 2 (p_t small) and a class weight of 3 on it; "none" keeps the weight in
    q = math.exp(-1) / (math.exp(2) + 1 + math.exp(-1))
    got = focal_loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([2]),
                     torch.tensor([1.0, 1.0, 3.0]), "none", gamma=1.5)
    assert got.item() == pytest.approx(-3.0 * (1 - q) ** 1.5 * math.log(q), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 1.5, 2.0])
def test_focal_class_weight_scales_but_is_not_in_modulating_term(gamma):
    logits, y = _batch(seed=1)
    w = torch.tensor([0.25, 1.0, 3.0, 5.0, 7.0])
    plain = focal_loss(logits, y, None, "none", gamma=gamma)
    weighted = focal_loss(logits, y, w, "none", gamma=gamma)
    assert_close(weighted, w[y] * plain, rtol=1e-6, atol=1e-7)
    # the known wrong variant takes p_t from the *weighted* cross-entropy
    logp_wrong = -F.cross_entropy(logits, y, weight=w, reduction="none")
    wrong = (1 - logp_wrong.exp()) ** gamma * -logp_wrong
    assert not torch.allclose(weighted, wrong, rtol=1e-3)
    # mean reduction is the weighted mean, like F.cross_entropy(weight=w)
    mean = focal_loss(logits, y, w, "mean", gamma=gamma)
    assert mean.item() == pytest.approx((w[y] * plain).sum().item() / w[y].sum().item(), rel=1e-6)
    assert focal_loss(logits, y, w, "sum", gamma=gamma).item() == pytest.approx(
        (w[y] * plain).sum().item(), rel=1e-6)


def test_focal_is_modulated_cross_entropy():
    logits, y = _batch(seed=2)
    ce = focal_loss(logits, y, None, "none", gamma=0.0)
    p = torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    assert_close(focal_loss(logits, y, None, "none", gamma=3.0), (1 - p) ** 3 * ce,
                 rtol=1e-5, atol=1e-7)


GAPS = [20.0, 100.0, 110.0, 200.0, 1e3, 1e4, 3e4]  # logit gaps: p_t near, then exactly, 1 or 0
FOCAL_GAMMAS = (0.0, 1e-6, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)  # the gammas in use, and one just above 0


def _each_focal_gamma(test):
    """An explicit example per FOCAL_GAMMAS value, besides the drawn ones."""
    for gamma in FOCAL_GAMMAS:
        test = example(gamma=gamma, num_classes=3, weighted=True, reduction="mean")(test)
    return test


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@_each_focal_gamma
@given(gamma=st.one_of(st.sampled_from(FOCAL_GAMMAS), st.floats(0, 5)), num_classes=st.integers(2, 10),
       weighted=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_focal_finite_at_extreme_probabilities(gamma, num_classes, weighted, reduction):
    """Each row has one logit a gap (``GAPS``) above the others, on the target (p_t ~ 1) or on the
    next class (p_t ~ 0): within 2e-8 of 1 and 0 at gaps 20 and 100 (e^-100 is a float32 denormal),
    exactly 1 and 0 from 110 on. In float32 and bfloat16, loss and gradient stay finite; a sure right
    answer costs nothing, a sure wrong one the gap ((1 - p_t)^gamma ~ 1)."""
    target = torch.arange(2 * num_classes * len(GAPS)) % num_classes
    n = len(target)
    leads = torch.arange(n) % (2 * num_classes) < num_classes  # per gap: C rows lead, C trail
    gap = torch.tensor(GAPS).repeat_interleave(2 * num_classes)
    weight = torch.linspace(0.5, 8.0, num_classes) if weighted else None
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.zeros(n, num_classes)
        logits[torch.arange(n), torch.where(leads, target, (target + 1) % num_classes)] = gap
        logits = logits.to(dtype).requires_grad_(True)
        p_t = F.softmax(logits.detach().float(), dim=1).gather(1, target[:, None]).squeeze(1)
        assert torch.equal(p_t[gap >= 110], leads[gap >= 110].float())  # the case under test really happens
        assert (p_t - leads.float()).abs().max() < 1e-7
        loss = focal_loss(logits, target, weight, reduction, gamma=gamma)
        assert torch.isfinite(loss).all(), loss
        loss.sum().backward()
        assert torch.isfinite(logits.grad.float()).all(), logits.grad
        per = focal_loss(logits.detach(), target, None, "none", gamma=gamma)
        assert per[leads].abs().max().item() < 1e-6
        assert_close(per[~leads], logits.detach().float()[~leads].amax(1), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_focal_loss_gradient_under_autocast_is_finite(dtype):
    """Through a layer, as in training: bf16 autocast on CPU, confident and hopeless samples mixed."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(16, 8) * 1e3  # saturated logits
    target = torch.randint(0, 4, (16,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = layer(x)
    for gamma in (0.0, 0.25, 1.5, 5.0):
        layer.zero_grad()
        loss = focal_loss(logits, target, torch.rand(4) + 0.5, gamma=gamma)
        loss.backward(retain_graph=True)
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in layer.parameters())


# ----------------------------------------------------------------------------------------------
# The two normalisations: "mean" (sum(w_y l) / sum(w_y)) and "batch_mean" (Cui et al.'s)

@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_batch_mean_without_weights_is_mean(gamma):
    x, y = _batch(1, 128, 10)
    assert_close(focal_loss(x, y, None, "batch_mean", gamma=gamma),
                 focal_loss(x, y, None, "mean", gamma=gamma), **F32)


@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_weighted_focal_gamma0_matches_ldam_drw_focal_as_batch_mean(n, c):
    # at gamma = 0 the p_t question vanishes; LDAM-DRW's FocalLoss then is mean_i(w_y ce_i), i.e.
    # divided by N, not by sum(w_y): our "batch_mean"
    x, y = _batch(n * c, n, c)
    w = _ref_per_cls_weights(_lt_counts(c), 0.9999)
    got = focal_loss(x, y, w, "batch_mean", gamma=0.0)
    assert_close(got, _ref_ldam_drw_focal(x, y, 0.0, weight=w), **F32)


@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_batch_mean_gamma0_matches_class_balanced_softmax(n, c):
    x, y = _batch(5 * n + c, n, c)
    w = effective_number_weights(_lt_counts(c), 0.9999)
    got = focal_loss(x, y, w, "batch_mean", gamma=0.0)
    assert_close(got, _ref_cb_softmax(y, x, w), **F32)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_batch_mean_divides_the_weighted_sum_by_the_batch_size(n, c, gamma):
    """Cui et al.'s normalisation, sum(w_y l) / N: richardaecn src/cifar_main.py focal_loss and vandit15
    class_balanced_loss.py focal_loss divide by sum(one-hot labels) = N. "mean" divides by sum(w_y)."""
    x, y = _batch(n + 3 * c, n, c)
    w = effective_number_weights(_lt_counts(c), 0.999)
    weighted = w[y] * focal_loss(x, y, None, "none", gamma=gamma)
    assert_close(focal_loss(x, y, w, "batch_mean", gamma=gamma), weighted.sum() / n, rtol=1e-6, atol=1e-6)
    assert_close(focal_loss(x, y, w, "mean", gamma=gamma), weighted.sum() / w[y].sum(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("n,c", [(7, 10), (128, 10), (50, 100)], ids=["7x10", "128x10", "50x100"])
def test_batch_mean_and_mean_differ_by_sum_of_weights_over_n(n, c, gamma):
    # a batch drawn from the long-tailed training distribution: mostly head classes, small w_y
    counts = _lt_counts(c)
    g = torch.Generator().manual_seed(2 * n + c)
    x = torch.randn(n, c, generator=g) * 3
    y = torch.multinomial(torch.tensor(counts, dtype=torch.float), n, replacement=True, generator=g)
    w = effective_number_weights(counts, 0.9999)
    batch_mean = focal_loss(x, y, w, "batch_mean", gamma=gamma)
    mean = focal_loss(x, y, w, "mean", gamma=gamma)
    factor = w[y].sum() / n
    assert factor.item() < 0.9  # so the two normalisations really differ here
    assert_close(batch_mean, mean * factor, **F32)


def test_reduction_unknown_raises():
    logits, y = _batch()
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, y, reduction="avg")


# ----------------------------------------------------------------------------------------------
# Static class weights

def test_inverse_frequency_weights_hand_computed():
    # 1/n = (1, 1/2, 1/4), sum 7/4, times C=3: (12/7, 6/7, 3/7)
    w = inverse_frequency_weights([1, 2, 4])
    assert_close(w, torch.tensor([12 / 7, 6 / 7, 3 / 7]))
    assert w.mean().item() == pytest.approx(1.0)
    assert_close(inverse_frequency_weights([7, 7, 7, 7]), torch.ones(4))


def test_effective_number_weights_hand_computed():
    # beta = 1/2: (1 - beta) / (1 - beta^n) = (1, 2/3, 4/7) for n = (1, 2, 3); sum 47/21
    w = effective_number_weights([1, 2, 3], beta=0.5)
    assert_close(w, torch.tensor([63 / 47, 42 / 47, 36 / 47]))
    # beta = 0.9, n = (100, 10)
    raw = [0.1 / (1 - 0.9 ** 100), 0.1 / (1 - 0.9 ** 10)]
    want = [2 * r / sum(raw) for r in raw]
    assert_close(effective_number_weights([100, 10], beta=0.9), torch.tensor(want))
    # limits: beta = 0 is uniform, beta -> 1 approaches inverse frequency
    assert_close(effective_number_weights([5000, 50], beta=0.0), torch.ones(2))
    assert_close(effective_number_weights([5000, 500, 50], beta=1 - 1e-9),
                 inverse_frequency_weights([5000, 500, 50]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5])
def test_effective_number_beta_out_of_range(beta):
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights([10, 5], beta=beta)


@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999, 0.9999])
@pytest.mark.parametrize("counts", [_lt_counts(10, 0.01), _lt_counts(10, 0.1), _lt_counts(100, 0.01),
                                    [2, 3, 1, 2, 2]], ids=["c10-lt100", "c10-lt10", "c100-lt100", "tiny"])
def test_effective_number_weights_match_ldam_drw_per_cls_weights(counts, beta):
    # beta = 0 (uniform, exactly 1 each) is DRW's first stage, betas[0] = 0 before its re-weighting epoch
    got = effective_number_weights(counts, beta)
    assert got.dtype == torch.float32
    assert_close(got, _ref_per_cls_weights(counts, beta), rtol=1e-6, atol=1e-7)
    assert got.double().sum().item() == pytest.approx(len(counts), rel=1e-6)


@pytest.mark.parametrize("counts", [_lt_counts(10, 0.01), _lt_counts(100, 0.02)], ids=["c10", "c100"])
def test_inverse_frequency_weights_are_the_beta_to_1_limit(counts):
    got = inverse_frequency_weights(counts)
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
    got = ldam_margins(counts, max_margin=max_m)
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
    got = ldam_loss(x, y, w, reduction, margins=m_list, scale=30.0)
    assert_close(got, _ref_ldam(x, y, m_list, 30.0, w, reduction), rtol=1e-5, atol=1e-5)


def test_ldam_loss_shifts_only_the_true_class_logit():
    # a margin on a wrong class must not matter: change m for classes absent from the batch
    x, y = _cosine_batch(32, 10, seed=3)
    y = y % 5  # only classes 0..4 present
    m = _ref_m_list(_lt_counts(10))
    m_other = m.clone()
    m_other[5:] = 0.9
    assert_close(ldam_loss(x, y, margins=m, reduction="none"), ldam_loss(x, y, margins=m_other, reduction="none"))


# ----------------------------------------------------------------------------------------------
# Logit adjustment and Balanced Softmax

def test_log_prior_is_log_of_class_frequencies():
    # counts (3, 1): frequencies (3/4, 1/4)
    assert log_prior([3, 1]).tolist() == pytest.approx([math.log(0.75), math.log(0.25)], rel=1e-6)


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_logit_adjusted_loss_matches_google_research(n, c, tau):
    x, y = _batch(n + 11 * c, n, c)
    counts = _lt_counts(c)
    base_probs = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    got = logit_adjusted_loss(x, y, log_priors=log_prior(counts), tau=tau)
    # the reference's +1e-12 inside the log moves the loss by < 1e-7 relative for these priors
    assert_close(got, _ref_la_loss(y, x.double(), base_probs, tau).float(), **F32)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("n,c", LOSS_SHAPES, ids=SHAPE_IDS)
def test_balanced_softmax_equals_logit_adjusted_tau1(n, c, reduction):
    # log n_c and log(n_c / sum n) differ by a per-row constant: softmax is shift-invariant
    x, y = _batch(n + 13 * c, n, c)
    counts = _lt_counts(c)
    got = logit_adjusted_loss(x, y, None, reduction, log_priors=log_prior(counts), tau=1.0)
    want = _ref_balanced_softmax(y, x, torch.tensor(counts), reduction)
    assert_close(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Dynamic class weights

def test_dynamic_weights_in_bounds_and_monotone():
    g = torch.Generator().manual_seed(0)
    dyn = DynamicClassWeights(10, min_weight=0.5, max_weight=4.0, ema_alpha=0.0, mode="loss")
    for _ in range(20):
        stat = torch.rand(10, generator=g, dtype=torch.float64) * 5
        w = dyn.update(stat)
        assert w.shape == (10,) and w.dtype == torch.float32
        assert w.min().item() == pytest.approx(0.5) and w.max().item() == pytest.approx(4.0)
        assert ((w >= 0.5) & (w <= 4.0)).all()
        assert w[stat.argmax()].item() == pytest.approx(4.0)  # hardest class: largest weight
        assert w[stat.argmin()].item() == pytest.approx(0.5)
        order = torch.argsort(stat)
        assert (torch.diff(w[order]) > 0).all()  # strictly increasing in the statistic


def test_dynamic_weights_exact_ema_arithmetic():
    dyn = DynamicClassWeights(3, min_weight=1.0, max_weight=8.0, ema_alpha=0.5)
    # first update: s = x
    w = dyn.update(torch.tensor([1.0, 2.0, 3.0]))
    assert dyn.smoothed.tolist() == [1.0, 2.0, 3.0]
    assert w.tolist() == [1.0, 4.5, 8.0]
    # s = 0.5 * (1, 2, 3) + 0.5 * (3, 2, 1) = (2, 2, 2): all equal -> all min_weight
    w = dyn.update(torch.tensor([3.0, 2.0, 1.0]))
    assert dyn.smoothed.tolist() == [2.0, 2.0, 2.0]
    assert w.tolist() == [1.0, 1.0, 1.0]
    # s = 0.5 * (2, 2, 2) + 0.5 * (6, 2, 0) = (4, 2, 1): w = 1 + 7 * (s - 1) / 3
    w = dyn.update(torch.tensor([6.0, 2.0, 0.0]))
    assert dyn.smoothed.tolist() == [4.0, 2.0, 1.0]
    assert_close(w, torch.tensor([8.0, 1.0 + 7 / 3, 1.0]))


def test_dynamic_weights_ema_alpha_08_over_several_updates():
    xs = [[0.9, 0.5, 2.0, 1.1], [1.2, 0.4, 1.0, 0.3], [0.2, 0.8, 0.6, 1.9], [1.0, 1.0, 0.1, 0.7]]
    dyn = DynamicClassWeights(4, min_weight=2.0, max_weight=5.0, ema_alpha=0.8)
    s = None
    for x in xs:
        w = dyn.update(torch.tensor(x, dtype=torch.float64))
        s = list(x) if s is None else [0.8 * a + 0.2 * b for a, b in zip(s, x)]
        lo, hi = min(s), max(s)
        want = [2.0 + 3.0 * (v - lo) / (hi - lo) for v in s]
        assert dyn.smoothed.tolist() == pytest.approx(s, rel=1e-12)
        assert w.tolist() == pytest.approx(want, rel=1e-6)


def test_dynamic_weights_all_equal_statistic_gives_min_weight():
    dyn = DynamicClassWeights(5, min_weight=1.5, max_weight=3.0, ema_alpha=0.3)
    assert dyn.update(torch.full((5,), 0.7)).tolist() == [1.5] * 5


def test_dynamic_weights_spread_within_noise_is_uniform():
    """A spread of 1e-7 on a statistic of 1 is float noise: uniform weights, not [1, 1, 8]."""
    dyn = DynamicClassWeights(3, min_weight=1.0, max_weight=8.0, ema_alpha=0.0)
    assert dyn.update(torch.tensor([1.0, 1.0, 1.0 + 1e-7], dtype=torch.float64)).tolist() == [1.0, 1.0, 1.0]
    # a real spread still maps onto the whole range
    assert dyn.update(torch.tensor([1.0, 1.0, 1.01], dtype=torch.float64)).tolist() == pytest.approx([1.0, 1.0, 8.0])


def test_dynamic_weights_tolerance_is_relative_to_the_statistic():
    """The tolerance follows the formula in the docstring: atol + rtol * max |s|."""
    dyn = DynamicClassWeights(2, min_weight=1.0, max_weight=8.0, ema_alpha=0.0)
    big = 1e3
    noise = 0.5 * (dyn.SPREAD_ATOL + dyn.SPREAD_RTOL * big)
    assert dyn.update(torch.tensor([big, big + noise], dtype=torch.float64)).tolist() == [1.0, 1.0]
    assert dyn.update(torch.tensor([big, big + 4 * noise], dtype=torch.float64)).tolist() == [1.0, 8.0]


def test_dynamic_weights_prior_blend_mixes_in_inverse_frequency():
    """u = (1 - b) unit(s) + b unit(1 / n): b = 1 is linear in 1/n, from min (largest class) to max
    (rarest); b = 0.5 averages the two unit vectors."""
    counts = [100, 50, 10]
    inv = [1 / 100, 1 / 50, 1 / 10]
    unit_prior = [(v - inv[0]) / (inv[2] - inv[0]) for v in inv]
    stat = torch.tensor([0.3, 0.9, 0.6], dtype=torch.float64)  # unit: 0, 1, 0.5
    only_prior = DynamicClassWeights(3, 1.0, 11.0, ema_alpha=0.0, prior_blend=1.0, counts=counts)
    assert only_prior.update(stat).tolist() == pytest.approx([1 + 10 * u for u in unit_prior])
    half = DynamicClassWeights(3, 1.0, 11.0, ema_alpha=0.0, prior_blend=0.5, counts=counts)
    want = [1 + 10 * (0.5 * a + 0.5 * b) for a, b in zip([0.0, 1.0, 0.5], unit_prior)]
    assert half.update(stat).tolist() == pytest.approx(want)
    with pytest.raises(ValueError, match="counts"):
        DynamicClassWeights(3, prior_blend=0.5)


def test_dynamic_weights_without_statistic_yet_are_min_weight():
    dyn = DynamicClassWeights(3, min_weight=2.0, max_weight=6.0, ema_alpha=0.5)
    assert dyn.update(None).tolist() == [2.0, 2.0, 2.0]
    assert dyn.smoothed is None  # the EMA starts with the first real statistic
    assert dyn.update(torch.tensor([1.0, 3.0, 2.0])).tolist() == [2.0, 6.0, 4.0]


def test_dynamic_mode_none_gives_ones():
    dyn = DynamicClassWeights(4, min_weight=2.0, max_weight=8.0, ema_alpha=0.8, mode="none")
    for stat in ([0.1, 5.0, 2.0, 3.0], [9.0, 0.0, 0.0, 1.0]):
        assert dyn.update(torch.tensor(stat)).tolist() == [1.0] * 4


def test_dynamic_weights_reject_non_finite_statistic():
    dyn = DynamicClassWeights(3)
    with pytest.raises(FloatingPointError):
        dyn.update(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(FloatingPointError):
        dyn.update(torch.tensor([1.0, 2.0]))  # wrong length


@pytest.mark.parametrize("kwargs, name", [
    (dict(min_weight=5.0, max_weight=2.0), "min_weight"),
    (dict(min_weight=0.0), "min_weight"),
    (dict(max_weight=-1.0), "max_weight"),
    (dict(ema_alpha=1.0), "ema_alpha"),
    (dict(ema_alpha=-0.1), "ema_alpha"),
    (dict(mode="median"), "dynamic_mode"),
])
def test_dynamic_weights_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DynamicClassWeights(3, **kwargs)


class _OnGpu:
    """Stands in for a tensor that torch.load put on a GPU: only .cpu() gives the tensor back."""
    def __init__(self, t: torch.Tensor):
        self.t = t

    def cpu(self) -> torch.Tensor:
        return self.t


def test_dynamic_weights_resume_onto_the_cpu_from_a_checkpoint_loaded_elsewhere():
    """A CUDA run loads its checkpoint onto its GPU (map_location); load_state_dict must bring the
    state back to the CPU, where update() folds in the statistic."""
    dyn = DynamicClassWeights(3, min_weight=1.0, max_weight=8.0, ema_alpha=0.5)
    dyn.update(torch.tensor([1.0, 2.0, 3.0]))
    resumed = DynamicClassWeights(3, min_weight=1.0, max_weight=8.0, ema_alpha=0.5)
    resumed.load_state_dict({k: _OnGpu(v) for k, v in dyn.state_dict().items()})
    assert resumed.smoothed.device.type == "cpu" and resumed.weights.device.type == "cpu"
    # s = 0.5 * (1, 2, 3) + 0.5 * (5, 2, 1) = (3, 2, 2): w = 1 + 7 * (s - 2) / 1
    assert resumed.update(torch.tensor([5.0, 2.0, 1.0])).tolist() == [8.0, 1.0, 1.0]
    assert resumed.smoothed.tolist() == [3.0, 2.0, 2.0]
    fresh = DynamicClassWeights(3)
    fresh.load_state_dict(DynamicClassWeights(3).state_dict())  # saved before any statistic
    assert fresh.smoothed is None


# ----------------------------------------------------------------------------------------------
# Dynamic class weights: the seed's minmax map is the default, bit for bit

def _seed_minmax(xs, lo, hi, a, prior_blend=0.0, counts=None):
    """The seed's formula written out: EMA, then lo + (hi - lo) * blend of unit(s) and unit(1/n)."""
    s, out = None, []
    for x in xs:
        x = torch.as_tensor(x, dtype=torch.float64)
        s = x.clone() if s is None else a * s + (1 - a) * x
        unit = (s - s.min()) / (s.max() - s.min())
        if prior_blend:
            inv = 1.0 / torch.as_tensor(counts, dtype=torch.float64)
            unit = (1 - prior_blend) * unit + prior_blend * (inv - inv.min()) / (inv.max() - inv.min())
        out.append((lo + (hi - lo) * unit).float())
    return out


@pytest.mark.parametrize("prior_blend", [0.0, 0.3])
def test_dynamic_weights_default_map_is_the_seed_formula_bit_for_bit(prior_blend):
    g = torch.Generator().manual_seed(3)
    xs = [torch.rand(10, generator=g, dtype=torch.float64) * 3 for _ in range(6)]
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    want = _seed_minmax(xs, 1.0, 8.0, 0.8, prior_blend, counts)
    default = DynamicClassWeights(10, 1.0, 8.0, 0.8, "loss", prior_blend, counts)
    named = DynamicClassWeights(10, 1.0, 8.0, 0.8, "loss", prior_blend, counts, weight_map="minmax", map_power=2.0)
    for x, w in zip(xs, want):
        assert torch.equal(default.update(x), w)
        assert torch.equal(named.update(x), w)  # map_power belongs to the power map only


# ----------------------------------------------------------------------------------------------
# Dynamic class weights: the power map

# n = (4, 2, 1, 1): p = (1/2, 1/4, 1/8, 1/8); s = (1, 2, 3, 6): s_bar = 17/8
COUNTS4, STAT4 = [4, 2, 1, 1], [1.0, 2.0, 3.0, 6.0]


def _power(lo, hi, beta=1.0, **kw):
    return DynamicClassWeights(4, lo, hi, ema_alpha=0.0, counts=COUNTS4, weight_map="power", map_power=beta, **kw)


def test_power_map_hand_computed_before_and_after_clipping():
    # beta = 1: u = s / s_bar = 8/17 * (1, 2, 3, 6), already mean 1 under p
    u1 = [8 / 17, 16 / 17, 24 / 17, 48 / 17]
    assert power_weights(STAT4, COUNTS4, 1.0).tolist() == pytest.approx(u1, rel=1e-12)
    assert _power(0.1, 10.0).update(torch.tensor(STAT4)).tolist() == pytest.approx(u1, rel=1e-6)
    assert _power(1.0, 8.0).update(torch.tensor(STAT4)).tolist() == pytest.approx([1, 1, 24 / 17, 48 / 17], rel=1e-6)
    assert _power(0.5, 2.0).update(torch.tensor(STAT4)).tolist() == pytest.approx([0.5, 16 / 17, 24 / 17, 2], rel=1e-6)
    # beta = 2: r ~ s^2 = (1, 4, 9, 36), sum p s^2 = 57/8, so u = 8/57 * (1, 4, 9, 36)
    u2 = [8 / 57, 32 / 57, 72 / 57, 288 / 57]
    assert power_weights(STAT4, COUNTS4, 2.0).tolist() == pytest.approx(u2, rel=1e-12)
    assert _power(0.1, 10.0, 2.0).update(torch.tensor(STAT4)).tolist() == pytest.approx(u2, rel=1e-6)
    assert _power(1.0, 8.0, 2.0).update(torch.tensor(STAT4)).tolist() == pytest.approx([1, 1, 72 / 57, 288 / 57], rel=1e-6)
    assert _power(0.5, 4.0, 2.0).update(torch.tensor(STAT4)).tolist() == pytest.approx([0.5, 32 / 57, 72 / 57, 4], rel=1e-6)


def test_power_map_prior_blend_in_weight_space():
    """v = (1 - b) u + b n_bar / n, n_bar = 2: the prior (1/2, 1, 2, 2) is inverse frequency of mean 1
    under p, so b = 1 is linear in 1 / n and any blend keeps mean 1 before the clip."""
    prior = [0.5, 1.0, 2.0, 2.0]
    u1 = [8 / 17, 16 / 17, 24 / 17, 48 / 17]
    only = _power(0.01, 100.0, prior_blend=1.0).update(torch.tensor(STAT4))
    assert only.tolist() == pytest.approx(prior, rel=1e-6)
    only_beta2 = _power(0.01, 100.0, beta=2.0, prior_blend=1.0).update(torch.tensor(STAT4))
    assert only_beta2.tolist() == pytest.approx(prior, rel=1e-6)  # map_power shapes the statistic only
    half = _power(0.01, 100.0, prior_blend=0.5).update(torch.tensor(STAT4))
    assert half.tolist() == pytest.approx([0.5 * a + 0.5 * b for a, b in zip(u1, prior)], rel=1e-6)
    p = torch.tensor(COUNTS4, dtype=torch.float64) / 8
    assert (p * half.double()).sum().item() == pytest.approx(1.0, rel=1e-6)
    assert _power(1.0, 8.0, prior_blend=1.0).update(torch.tensor(STAT4)).tolist() == pytest.approx([1, 1, 2, 2])


@pytest.mark.parametrize("lo, hi", [(1.0, 8.0), (0.5, 2.0), (2.0, 4.0), (0.25, 0.5)])
def test_power_map_equal_statistics_give_equal_weights(lo, hi):
    """All s_c equal (s_bar = 0 included): u = 1 for every class, w = clip(1); the same before any
    statistic."""
    clip1 = min(max(1.0, lo), hi)
    for stat in (torch.full((4,), 0.37), torch.zeros(4)):
        assert _power(lo, hi).update(stat).tolist() == [clip1] * 4
    assert _power(lo, hi).update(None).tolist() == [clip1] * 4
    assert _power(lo, hi, beta=0.0).update(torch.tensor(STAT4)).tolist() == [clip1] * 4  # beta 0: uniform


def test_power_map_keeps_a_spread_within_noise_small_where_minmax_spreads_it():
    """End-of-training losses 0.010, 0.011, 0.012: the power map (beta 1) keeps them within 20 % of
    one another; the minmax map spreads them over the whole [1, 8]."""
    stat = torch.tensor([0.010, 0.011, 0.012], dtype=torch.float64)
    counts = [5000, 500, 50]
    power = DynamicClassWeights(3, 1.0, 8.0, ema_alpha=0.0, counts=counts, weight_map="power").update(stat)
    assert power.max().item() / power.min().item() <= 1.2 + 1e-6
    assert (torch.diff(power) > 0).all()  # still ordered by the statistic
    unclipped = power_weights(stat, counts, 1.0)
    assert unclipped.max().item() / unclipped.min().item() == pytest.approx(1.2, rel=1e-12)  # = s ratio
    minmax = DynamicClassWeights(3, 1.0, 8.0, ema_alpha=0.0).update(stat)
    assert minmax.tolist() == pytest.approx([1.0, 4.5, 8.0])


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 3.0])
def test_power_map_mean_one_under_training_distribution_then_clipped(beta):
    g = torch.Generator().manual_seed(4)
    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], dtype=torch.float64)
    p = counts / counts.sum()
    dyn = DynamicClassWeights(10, 0.5, 4.0, ema_alpha=0.0, counts=counts, weight_map="power", map_power=beta)
    for _ in range(20):
        stat = torch.rand(10, generator=g, dtype=torch.float64) * 2
        u = power_weights(stat, counts, beta)
        assert (p * u).sum().item() == pytest.approx(1.0, rel=1e-12)
        w = dyn.update(stat)
        assert ((w >= 0.5) & (w <= 4.0)).all()
        assert_close(w, u.clamp(0.5, 4.0).float(), rtol=0, atol=0)
        order = torch.argsort(stat)
        assert (torch.diff(w[order]) >= 0).all()  # harder never weighs less


def test_power_map_ema_and_resume():
    """The EMA smooths the statistic, not the weights; a resumed map continues bit for bit."""
    xs = [[1.0, 2.0, 3.0, 6.0], [3.0, 2.0, 1.0, 2.0], [0.5, 0.5, 4.0, 1.0]]
    kw = dict(min_weight=0.1, max_weight=10.0, ema_alpha=0.5, counts=COUNTS4, weight_map="power", map_power=2.0)
    dyn = DynamicClassWeights(4, **kw)
    dyn.update(torch.tensor(xs[0]))
    w = dyn.update(torch.tensor(xs[1]))
    s = [0.5 * a + 0.5 * b for a, b in zip(xs[0], xs[1])]  # (2, 2, 2, 4)
    assert dyn.smoothed.tolist() == s
    assert w.tolist() == pytest.approx(power_weights(s, COUNTS4, 2.0).tolist(), rel=1e-6)
    resumed = DynamicClassWeights(4, **kw)
    resumed.load_state_dict({k: _OnGpu(v) for k, v in dyn.state_dict().items()})
    assert torch.equal(resumed.weights, w)
    assert torch.equal(resumed.update(torch.tensor(xs[2])), dyn.update(torch.tensor(xs[2])))
    assert resumed.smoothed.tolist() == [1.25, 1.25, 3.0, 2.5]


def test_train_eval_loss_is_a_statistic_like_the_others():
    """The mode only names where the statistic comes from; the map is the same."""
    assert "train_eval_loss" in DYNAMIC_MODES
    x = torch.tensor([0.2, 0.9, 0.4])
    assert torch.equal(DynamicClassWeights(3, mode="train_eval_loss").update(x), DynamicClassWeights(3).update(x))


@pytest.mark.parametrize("kwargs, name", [
    (dict(weight_map="sqrt", counts=[3, 2, 1]), "weight_map"),
    (dict(weight_map="power", map_power=-1.0, counts=[3, 2, 1]), "map_power"),
    (dict(weight_map="power", map_power=float("nan"), counts=[3, 2, 1]), "map_power"),
    (dict(weight_map="power"), "counts"),
    (dict(weight_map="power", counts=[3, 0, 1]), "counts"),
    (dict(weight_map="power", counts=[3, 2]), "counts"),
])
def test_power_map_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DynamicClassWeights(3, **kwargs)


def test_power_map_refuses_negative_and_missing_statistics():
    dyn = DynamicClassWeights(3, counts=[3, 2, 1], weight_map="power")
    with pytest.raises(ValueError, match=">= 0"):
        dyn.update(torch.tensor([0.5, -0.1, 1.0]))
    with pytest.raises(FloatingPointError):
        dyn.update(torch.tensor([0.5, float("nan"), 1.0]))  # a class with no statistic
    assert dyn.smoothed is None  # refused statistics leave the EMA untouched


# ----------------------------------------------------------------------------------------------
# Label-aware smoothing (MiSLAS)

def test_label_aware_epsilons_hand_computed():
    # counts 100, 50, 10: u = (n - 10) / 90 = 1, 4/9, 0; head 0.3, tail 0.05
    counts, head, tail = [100, 50, 10], 0.3, 0.05
    u = 4 / 9
    want = {"concave": tail + (head - tail) * math.sin(math.pi / 2 * u),
            "linear": tail + (head - tail) * u,
            "convex": head - (head - tail) * math.cos(math.pi / 2 * u),
            "exp": tail + (head - tail) * u ** 3}
    for shape, middle in want.items():
        eps = label_aware_epsilons(counts, head, tail, shape, power=3.0)
        assert eps.tolist() == pytest.approx([head, middle, tail], rel=1e-6), shape
    # with epsilon_1 > epsilon_K the middle class orders concave > linear > convex
    assert want["concave"] > want["linear"] > want["convex"]


def test_label_aware_epsilons_follow_counts_not_index():
    eps = label_aware_epsilons([10, 100, 55], 0.4, 0.1, "linear")
    assert eps.tolist() == pytest.approx([0.1, 0.4, 0.25], rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(counts=[5, 5, 5]), "unequal"), (dict(shape="cubic"), "shape"), (dict(shape="exp"), "power")])
def test_label_aware_epsilons_refuse(kwargs, match):
    args = {"counts": [100, 10], "eps_head": 0.3, "eps_tail": 0.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        label_aware_epsilons(**args)


def test_label_aware_smoothing_hand_computed():
    # logits (2, 0, -1), true class 0, eps_0 = 0.3: 0.7 * (-log p_0) + 0.3 * mean_c(-log p_c)
    z = [2.0, 0.0, -1.0]
    log_z = math.log(sum(math.exp(v) for v in z))
    logp = [v - log_z for v in z]
    want = 0.7 * -logp[0] + 0.3 * -sum(logp) / 3
    eps = torch.tensor([0.3, 0.2, 0.1])
    got = label_aware_smoothing_loss(torch.tensor([z]), torch.tensor([0]), epsilons=eps)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # the same as CE against q = (1 - eps_y) onehot + eps_y / C: the true class gets 0.7 + 0.1
    q = [0.8, 0.1, 0.1]
    assert got.item() == pytest.approx(-sum(a * b for a, b in zip(q, logp)), rel=1e-6)


def test_label_aware_smoothing_is_smoothed_cross_entropy_per_class():
    logits, y = _batch(seed=4)
    eps = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0])
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])
    q = (1 - eps[y])[:, None] * F.one_hot(y, 5) + (eps[y] / 5)[:, None]
    per_sample = -(q * F.log_softmax(logits, 1)).sum(1)
    got = label_aware_smoothing_loss(logits, y, w, "none", epsilons=eps)
    assert_close(got, w[y] * per_sample, rtol=1e-6, atol=1e-6)
    mean = label_aware_smoothing_loss(logits, y, w, "mean", epsilons=eps)
    assert mean.item() == pytest.approx(((w[y] * per_sample).sum() / w[y].sum()).item(), rel=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_label_aware_smoothing_eps0_is_cross_entropy(reduction, weighted):
    logits, y = _batch(seed=5)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0]) if weighted else None
    got = label_aware_smoothing_loss(logits, y, w, reduction, epsilons=torch.zeros(5))
    assert_close(got, F.cross_entropy(logits, y, weight=w, reduction=reduction),
                 rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Mixup loss

def test_mixup_loss_is_lam_weighted_sum_of_two_cross_entropies():
    logits, y = _batch(seed=6, n=8)
    y_b = y[torch.tensor([3, 0, 7, 1, 2, 6, 4, 5])]
    lam = 0.3
    want = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y_b)
    got = mixup_loss(focal_loss, logits, y, y_b, lam)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # with class weights each term is a weighted mean under its own labels
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])
    want_w = lam * F.cross_entropy(logits, y, weight=w) + (1 - lam) * F.cross_entropy(logits, y_b, weight=w)
    assert mixup_loss(focal_loss, logits, y, y_b, lam, w).item() == pytest.approx(want_w.item(), rel=1e-6)
    # "batch_mean": each weighted sum over N
    ce = lambda t: F.cross_entropy(logits, t, reduction="none")
    want_b = lam * (w[y] * ce(y)).sum() / 8 + (1 - lam) * (w[y_b] * ce(y_b)).sum() / 8
    got_b = mixup_loss(focal_loss, logits, y, y_b, lam, w, "batch_mean")
    assert got_b.item() == pytest.approx(want_b.item(), rel=1e-6)
    # lam = 1 is the plain loss
    assert mixup_loss(focal_loss, logits, y, y_b, 1.0, w).item() == pytest.approx(
        focal_loss(logits, y, w).item(), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Weight balancing: softmax BCE and MaxNorm

def test_softmax_bce_hand_computed():
    # logits (2, 0, -1), true class 1: -(1/3) [log(1 - p_0) + log p_1 + log(1 - p_2)]
    e = [math.exp(2), 1.0, math.exp(-1)]
    p = [v / sum(e) for v in e]
    want = -(math.log(1 - p[0]) + math.log(p[1]) + math.log(1 - p[2])) / 3
    got = softmax_bce_loss(torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1]))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_softmax_bce_batch_mean_is_weight_balancings_cb_loss():
    """CB_loss(..., "softmax"): F.binary_cross_entropy(softmax, onehot, weight=w_y per row),
    the mean over all N x C entries."""
    logits, y = _batch(seed=7)
    counts = [500, 200, 80, 30, 10]
    w = effective_number_weights(counts, beta=0.9999)
    ref = F.binary_cross_entropy(logits.softmax(1), F.one_hot(y, 5).float(),
                                 weight=w[y][:, None].expand(-1, 5))
    got = softmax_bce_loss(logits, y, w, "batch_mean")
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.isfinite(softmax_bce_loss(torch.tensor([[200.0, 0.0]]), torch.tensor([1])))


def test_max_norm_projects_only_rows_outside_the_ball():
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, -10.0], [1.2, 1.6]])  # norms 5, 1, 10, 2
    before = w.clone()
    max_norm_(w, 2.0)
    assert w.norm(dim=1).tolist() == pytest.approx([2.0, 1.0, 2.0, 2.0], rel=1e-6)
    assert torch.equal(w[1], before[1]) and torch.equal(w[3], before[3])  # within (or on) the ball
    assert_close(w[0], torch.tensor([1.2, 1.6]))  # same direction, norm 2
    assert_close(w[2], torch.tensor([0.0, -2.0]))


def test_max_norm_radius_is_relative_to_the_row_norms():
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, -10.0]])  # norms 5, 1, 10
    assert max_norm_radius(w, 0.1) == pytest.approx(1 + 0.1 * 9)
    assert max_norm_radius(w, 0.0) == pytest.approx(1.0) and max_norm_radius(w, 1.0) == pytest.approx(10.0)


# ----------------------------------------------------------------------------------------------
# tau-normalisation

TAU_SHAPES = [(2, 3), (10, 64), (100, 128)]  # classifier weight (C, D)


def test_tau_norm_logits_by_hand():
    # rows w_0 = (3, 4) (norm 5), w_1 = (0, 1) (norm 1); f = (1, 1): <f, w_c> / ||w_c||^tau
    f, w = torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert tau_norm_logits(f, w, 1.0).tolist()[0] == pytest.approx([7 / 5, 1.0])
    assert tau_norm_logits(f, w, 0.5).tolist()[0] == pytest.approx([7 / math.sqrt(5), 1.0])
    assert tau_norm_logits(f, w, 0.0).tolist()[0] == pytest.approx([7.0, 1.0])


@pytest.mark.parametrize("c,d", TAU_SHAPES, ids=[f"{c}x{d}" for c, d in TAU_SHAPES])
def test_tau_normalize_matches_classifier_balancing_pnorm(c, d):
    g = torch.Generator().manual_seed(c * d)
    row_scale = 0.1 + 3 * torch.rand(c, 1, generator=g, dtype=torch.float64)  # unequal class norms
    weights = torch.randn(c, d, generator=g, dtype=torch.float64) * row_scale
    for p in np.linspace(0, 2, 21):
        assert_close(tau_normalize(weights, p), _ref_pnorm(weights, p), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c,d", TAU_SHAPES, ids=[f"{c}x{d}" for c, d in TAU_SHAPES])
def test_tau_norm_logits_match_classifier_balancing_without_bias(c, d):
    g = torch.Generator().manual_seed(c + d)
    fc = nn.Linear(d, c).double()
    with torch.no_grad():
        fc.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
        fc.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    feats = torch.randn(17, d, generator=g, dtype=torch.float64).relu()
    for p in np.linspace(0, 2, 21):
        got = tau_norm_logits(feats, fc.weight.detach(), p)
        assert_close(got, _ref_dotproduct(feats, _ref_pnorm(fc.weight.detach(), p)), rtol=1e-12, atol=1e-12)
    # tau = 0 is the trained layer with its bias dropped
    assert_close(tau_norm_logits(feats, fc.weight.detach(), 0.0), (fc(feats) - fc.bias).detach(),
                 rtol=1e-12, atol=1e-12)
