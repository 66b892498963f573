"""Focal loss, static class weights, dynamic class weights and the comparison methods' losses
(label-aware smoothing, mixup, softmax BCE, MaxNorm), against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losses import (DYNAMIC_MODES, DynamicClassWeights, effective_number_weights, focal_loss,
                    inverse_frequency_weights, label_aware_epsilons, label_aware_smoothing_loss, max_norm_,
                    max_norm_radius, mixup_loss, power_weights, softmax_bce_loss)

REDUCTIONS = ("none", "mean", "sum")


def _batch(seed=0, n=16, C=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g) * 3, torch.randint(C, (n,), generator=g)


# ----------------------------------------------------------------------------------------------
# Focal loss

@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_gamma0_is_cross_entropy(reduction, weighted):
    logits, y = _batch()
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0]) if weighted else None
    got = focal_loss(logits, y, w, reduction, gamma=0.0)
    want = F.cross_entropy(logits, y, weight=w, reduction=reduction)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


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
    torch.testing.assert_close(weighted, w[y] * plain, rtol=1e-6, atol=1e-7)
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
    torch.testing.assert_close(focal_loss(logits, y, None, "none", gamma=3.0), (1 - p) ** 3 * ce,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0])
def test_focal_finite_at_extreme_probabilities(dtype, gamma):
    # rows: p_t rounds to 1 exactly, p_t ~ 1 - 4e-9, p_t ~ e^-100, p_t ~ e^-1000 (underflows)
    logits = torch.tensor([[100.0, 0.0, 0.0], [20.0, 0.0, 0.0], [100.0, 0.0, 0.0],
                           [1000.0, 0.0, -5.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([0, 0, 1, 2])
    w = torch.tensor([1.0, 2.0, 8.0])
    loss = focal_loss(logits, y, w, "mean", gamma=gamma)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad.float()).all()
    per = focal_loss(logits.detach(), y, None, "none", gamma=gamma)
    assert torch.isfinite(per).all()
    assert per[0].item() == pytest.approx(0.0, abs=1e-6)  # a sure, right answer costs nothing
    assert per[2].item() == pytest.approx(100.0, rel=1e-2)  # (1 - p_t)^gamma ~ 1 when p_t ~ 0


def test_batch_mean_divides_the_weighted_sum_by_the_batch_size():
    """Cui et al.'s normalisation: sum(w_y l) / N; "mean" divides by sum(w_y) instead."""
    z, y = _batch(3)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])
    per_sample = focal_loss(z, y, None, "none", gamma=1.0)
    got = focal_loss(z, y, w, "batch_mean", gamma=1.0)
    assert got.item() == pytest.approx(((w[y] * per_sample).sum() / len(y)).item(), rel=1e-6)
    assert focal_loss(z, y, w, "mean", gamma=1.0).item() == pytest.approx(
        ((w[y] * per_sample).sum() / w[y].sum()).item(), rel=1e-6)


def test_reduction_unknown_raises():
    logits, y = _batch()
    with pytest.raises(ValueError, match="reduction"):
        focal_loss(logits, y, reduction="avg")


# ----------------------------------------------------------------------------------------------
# Static class weights

def test_inverse_frequency_weights_hand_computed():
    # 1/n = (1, 1/2, 1/4), sum 7/4, times C=3: (12/7, 6/7, 3/7)
    w = inverse_frequency_weights([1, 2, 4])
    torch.testing.assert_close(w, torch.tensor([12 / 7, 6 / 7, 3 / 7]))
    assert w.mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(inverse_frequency_weights([7, 7, 7, 7]), torch.ones(4))


def test_effective_number_weights_hand_computed():
    # beta = 1/2: (1 - beta) / (1 - beta^n) = (1, 2/3, 4/7) for n = (1, 2, 3); sum 47/21
    w = effective_number_weights([1, 2, 3], beta=0.5)
    torch.testing.assert_close(w, torch.tensor([63 / 47, 42 / 47, 36 / 47]))
    # beta = 0.9, n = (100, 10)
    raw = [0.1 / (1 - 0.9 ** 100), 0.1 / (1 - 0.9 ** 10)]
    want = [2 * r / sum(raw) for r in raw]
    torch.testing.assert_close(effective_number_weights([100, 10], beta=0.9), torch.tensor(want))
    # limits: beta = 0 is uniform, beta -> 1 approaches inverse frequency
    torch.testing.assert_close(effective_number_weights([5000, 50], beta=0.0), torch.ones(2))
    torch.testing.assert_close(effective_number_weights([5000, 500, 50], beta=1 - 1e-9),
                               inverse_frequency_weights([5000, 500, 50]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, -0.1, 1.5])
def test_effective_number_beta_out_of_range(beta):
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights([10, 5], beta=beta)


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
    torch.testing.assert_close(w, torch.tensor([8.0, 1.0 + 7 / 3, 1.0]))


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
        torch.testing.assert_close(w, u.clamp(0.5, 4.0).float(), rtol=0, atol=0)
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
    torch.testing.assert_close(got, w[y] * per_sample, rtol=1e-6, atol=1e-6)
    mean = label_aware_smoothing_loss(logits, y, w, "mean", epsilons=eps)
    assert mean.item() == pytest.approx(((w[y] * per_sample).sum() / w[y].sum()).item(), rel=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_label_aware_smoothing_eps0_is_cross_entropy(reduction, weighted):
    logits, y = _batch(seed=5)
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0]) if weighted else None
    got = label_aware_smoothing_loss(logits, y, w, reduction, epsilons=torch.zeros(5))
    torch.testing.assert_close(got, F.cross_entropy(logits, y, weight=w, reduction=reduction),
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
    torch.testing.assert_close(w[0], torch.tensor([1.2, 1.6]))  # same direction, norm 2
    torch.testing.assert_close(w[2], torch.tensor([0.0, -2.0]))


def test_max_norm_radius_is_relative_to_the_row_norms():
    w = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, -10.0]])  # norms 5, 1, 10
    assert max_norm_radius(w, 0.1) == pytest.approx(1 + 0.1 * 9)
    assert max_norm_radius(w, 0.0) == pytest.approx(1.0) and max_norm_radius(w, 1.0) == pytest.approx(10.0)
