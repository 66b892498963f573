"""What each method's stage computes, from its config to a number, against hand calculations.

tests/test_reference_formulas.py compares the loss functions with re-implementations of the
reference code; this file pins the other half: that ``build_loss`` and ``static_weights`` hand each
method's settings (``focal_gamma``, ``la_tau``, ``ldam_max_margin``, ``ldam_scale``, ``cb_beta``,
``stage2_loss_type``, ``stage2_focal_gamma``) to those functions, and what the METHODS table says
each method does. Inputs are small enough to work out on paper; each expected value says how.
"""
from __future__ import annotations

import math

import pytest
import torch

import losses
from config import TwoStageConfig
from methods import METHODS, build_loss, static_weights

ZERO = torch.zeros(1, 2)  # logits [[0, 0]]: every softmax probability is 1/2 before any shift


def cfg(**kw) -> TwoStageConfig:
    return TwoStageConfig("resnet32", "long_tail", **kw)


def loss_of(name: str, counts, logits=ZERO, y=1, **settings) -> float:
    f = build_loss(name, counts, cfg(**settings))
    return f(logits, torch.tensor([y]), None, "mean").item()


def test_logit_adjust_shifts_by_tau_log_prior():
    # z = 2 log(3/4, 1/4); CE(y=1) = log(e^{z0} + e^{z1}) - z1 = log(9/16 + 1/16) - log(1/16) = log 10
    assert loss_of("logit_adjust", [3, 1], la_tau=2.0) == pytest.approx(math.log(10), rel=1e-6)
    assert loss_of("logit_adjust", [3, 1], la_tau=0.0) == pytest.approx(math.log(2), rel=1e-6)  # plain CE


def test_balanced_softmax_shifts_by_log_counts():
    # z = (log 3, 0); CE(y=1) = log(3 + 1) - 0 = log 4, whatever la_tau says
    assert loss_of("balanced_softmax", [3, 1], la_tau=2.0) == pytest.approx(math.log(4), rel=1e-6)


def test_ldam_uses_the_configured_margin_and_scale():
    # margins proportional to n^(-1/4): (16, 1) -> (1/2, 1) -> scaled so the largest is 0.4: (0.2, 0.4)
    assert losses.ldam_margins([16, 1], 0.4).tolist() == pytest.approx([0.2, 0.4])
    # z = 10 * (0.5 - 0.2, 0) = (3, 0); CE(y=0) = log(1 + e^{-3})
    got = loss_of("ldam", [16, 1], logits=torch.tensor([[0.5, 0.0]]), y=0, ldam_max_margin=0.4, ldam_scale=10.0)
    assert got == pytest.approx(math.log1p(math.exp(-3)), rel=1e-6)


def test_focal_uses_focal_gamma():
    # p_y = 1/2: -(1 - p)^gamma log p = 0.5^2 log 2
    assert loss_of("focal", [3, 1], focal_gamma=2.0) == pytest.approx(0.25 * math.log(2), rel=1e-6)


# logit_adjust with la_tau=2 on counts (3, 1): log 10, as in test_logit_adjust_shifts_by_tau_log_prior
@pytest.mark.parametrize("loss_type, want", [("ce", math.log(2)), ("focal", 0.5 ** 1.5 * math.log(2)),
                                             ("logit_adjust", math.log(10))])
def test_two_stage_loss_follows_stage2_loss_type_and_its_own_gamma(loss_type, want):
    got = loss_of("ictta", [3, 1], stage2_loss_type=loss_type, stage2_focal_gamma=1.5, focal_gamma=4.0, la_tau=2.0)
    assert got == pytest.approx(want, rel=1e-6)


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: ce, focal"):
        build_loss("hinge", [3, 1], cfg())


def test_effective_number_weights_use_cb_beta():
    # E_n = (1 - beta^n) / (1 - beta): beta = 0.9999 gives E = (3934.85, 49.88); w ~ 1 / E, summing to 2
    beta = 0.9999
    e = [(1 - beta ** n) / (1 - beta) for n in (5000, 50)]
    want = [2 * (1 / x) / sum(1 / x for x in e) for x in e]
    assert want == pytest.approx([0.025035, 1.974965], abs=1e-6)
    assert static_weights("effective", [5000, 50], cfg(cb_beta=beta)).tolist() == pytest.approx(want, rel=1e-6)
    # beta = 0: every E_n is 1, so the weights are uniform
    assert static_weights("effective", [5000, 50], cfg(cb_beta=0.0)).tolist() == pytest.approx([1.0, 1.0])
    assert static_weights("none", [5000, 50], cfg()) is None


def test_the_method_table():
    """Each method's loss and weights per stage, and the reference's normalisation."""
    table = {name: (m.loss1, m.weights1, m.loss2, m.weights2) for name, m in METHODS.items()}
    assert table["drw"] == ("ce", "none", "ce", "effective")  # deferred re-weighting
    assert table["ldam_drw"] == ("ldam", "none", "ldam", "effective")
    assert table["cb_focal"] == ("focal", "effective", "focal", "effective")
    assert table["rw"] == ("ce", "inverse", "ce", "inverse")
    assert table["two_stage_ictta"] == ("ce", "none", "ictta", "dynamic")  # CE stage 1, dynamic stage 2
    assert METHODS["cb_focal"].normalization == "batch_mean"  # Cui et al. divide by the batch size
    assert table["mislas"] == ("ce", "none", "las", "none")  # label-aware smoothing in stage 2
    assert table["weight_balancing"] == ("ce", "none", "softmax_bce", "effective")
    # Cui et al. and weight balancing's N x C mean both divide by the batch size
    assert {n for n, m in METHODS.items() if m.normalization != "mean"} == {"cb_focal", "weight_balancing"}
    assert {n for n, m in METHODS.items() if m.normed_classifier} == {"ldam_drw"}  # LDAM's cosine classifier


def test_tau_norm_logits_by_hand():
    # rows w_0 = (3, 4) (norm 5), w_1 = (0, 1) (norm 1); f = (1, 1): <f, w_c> / ||w_c||^tau
    f, w = torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert losses.tau_norm_logits(f, w, 1.0).tolist()[0] == pytest.approx([7 / 5, 1.0])
    assert losses.tau_norm_logits(f, w, 0.5).tolist()[0] == pytest.approx([7 / math.sqrt(5), 1.0])
    assert losses.tau_norm_logits(f, w, 0.0).tolist()[0] == pytest.approx([7.0, 1.0])


def test_mislas_smoothing_runs_from_0_3_on_the_largest_class_to_0_on_the_smallest():
    # counts (3, 1): eps = (0.3, 0); z = (1, 0), y = 0: (1 - 0.3) CE + 0.3 * mean_c(-log p_c)
    nll0, nll1 = math.log1p(math.exp(-1)), 1 + math.log1p(math.exp(-1))
    got = loss_of("las", [3, 1], logits=torch.tensor([[1.0, 0.0]]), y=0)
    assert got == pytest.approx(0.7 * nll0 + 0.3 * (nll0 + nll1) / 2, rel=1e-6)
    assert loss_of("las", [3, 1], logits=torch.tensor([[1.0, 0.0]]), y=1) == pytest.approx(nll1, rel=1e-6)  # eps 0


def test_weight_balancing_stage2_loss_is_the_softmax_bce():
    # z = (0, 0), y = 1: p = (1/2, 1/2); -(1/2) [log(1/2) + log(1 - 1/2)] = log 2
    assert loss_of("softmax_bce", [3, 1]) == pytest.approx(math.log(2), rel=1e-6)
