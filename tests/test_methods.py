"""What each method's stage computes, from its config to a number, against hand calculations, and
the learning-rate schedule (``lr_at_step``).

tests/test_losses.py compares the loss functions with hand calculations and with re-implementations
of the reference code; this file pins the other half: that ``build_loss`` and ``static_weights`` hand
each method's settings (``focal_gamma``, ``la_tau``, ``ldam_max_margin``, ``ldam_scale``, ``cb_beta``,
``stage2_loss_type``, ``stage2_focal_gamma``) to those functions, and what the METHODS table says
each method does. Inputs are small enough to work out on paper; each expected value says how.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import losses
from config import TwoStageConfig
from methods import LOSS_SETTINGS, LOSSES, METHODS, WEIGHT_READS, build_loss, lr_at_step, static_weights

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


# another value of each loss setting, and of the stage-2 loss type that decides which of them ictta reads
CHANGED = {"focal_gamma": 3.0, "cb_beta": 0.9, "ldam_max_margin": 0.2, "ldam_scale": 5.0, "la_tau": 2.5,
           "stage2_focal_gamma": 0.5}
ICTTA_TYPES = ("focal", "ce", "logit_adjust")


def test_each_loss_and_weighting_reads_only_the_settings_it_declares():
    """A stage's identity holds only the loss settings its loss and weights declare (Method.reads),
    so a loss must change with every setting it reads and with none it does not declare."""
    assert LOSS_SETTINGS == set(CHANGED) | {"stage2_loss_type"}
    counts, logits, y = [40, 20, 10, 5], torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), \
        torch.tensor([0, 1, 2, 3, 3, 2])

    def value(name, **settings):
        return build_loss(name, counts, cfg(**settings))(logits, y, None, "mean").item()

    for name, loss in LOSSES.items():
        read = set()  # over ictta's loss types, each of which reads its own
        for loss_type in ICTTA_TYPES if name == "ictta" else ("focal",):
            base = dict(stage2_loss_type=loss_type)
            read |= {s for s in CHANGED if value(name, **base) != value(name, **base, **{s: CHANGED[s]})}
        assert read == set(loss.reads) - {"stage2_loss_type"}, name
    for kind in ("none", "inverse", "effective"):
        base = static_weights(kind, counts, cfg())
        read = {s for s, v in CHANGED.items() if base is not None
                and not torch.equal(static_weights(kind, counts, cfg(**{s: v})), base)}
        assert read == set(WEIGHT_READS.get(kind, ())), kind


def test_a_stage_reads_its_own_loss_and_weight_settings():
    assert METHODS["drw"].reads(1) == set() and METHODS["drw"].reads(2) == {"cb_beta"}
    assert METHODS["cb_focal"].reads(1) == {"focal_gamma", "cb_beta"}
    assert METHODS["ldam_drw"].reads(1) == {"ldam_max_margin", "ldam_scale"}
    assert "la_tau" in METHODS["two_stage_ictta"].reads(2) and METHODS["two_stage_ictta"].reads(1) == set()


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


def test_mislas_smoothing_runs_from_0_3_on_the_largest_class_to_0_on_the_smallest():
    # counts (3, 1): eps = (0.3, 0); z = (1, 0), y = 0: (1 - 0.3) CE + 0.3 * mean_c(-log p_c)
    nll0, nll1 = math.log1p(math.exp(-1)), 1 + math.log1p(math.exp(-1))
    got = loss_of("las", [3, 1], logits=torch.tensor([[1.0, 0.0]]), y=0)
    assert got == pytest.approx(0.7 * nll0 + 0.3 * (nll0 + nll1) / 2, rel=1e-6)
    assert loss_of("las", [3, 1], logits=torch.tensor([[1.0, 0.0]]), y=1) == pytest.approx(nll1, rel=1e-6)  # eps 0


def test_weight_balancing_stage2_loss_is_the_softmax_bce():
    # z = (0, 0), y = 1: p = (1/2, 1/2); -(1/2) [log(1/2) + log(1 - 1/2)] = log 2
    assert loss_of("softmax_bce", [3, 1]) == pytest.approx(math.log(2), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Learning-rate schedule

def test_lr_warmup_then_cosine():
    c = cfg(stage1_epochs=10, stage2_epochs=4, stage1_lr=0.1, stage2_lr=0.01, warmup_epochs=2)
    spe = 5
    T = 50  # stage-1 steps
    cos = lambda t: 0.1 * 0.5 * (1 + math.cos(math.pi * t / T))
    # linear warm-up over 2 epochs = 10 steps: factor (step + 1) / 10
    for step in range(10):
        assert lr_at_step(step, spe, c, 1) == pytest.approx(cos(step) * (step + 1) / 10, rel=1e-12)
    assert lr_at_step(0, spe, c, 1) == pytest.approx(0.01, rel=1e-12)
    assert lr_at_step(9, spe, c, 1) == pytest.approx(cos(9), rel=1e-12)  # warm-up done
    assert lr_at_step(25, spe, c, 1) == pytest.approx(0.05, rel=1e-12)  # half way: base / 2
    assert lr_at_step(T, spe, c, 1) == pytest.approx(0.0, abs=1e-15)  # cosine ends at 0
    assert 0 < lr_at_step(T - 1, spe, c, 1) < 1e-3
    # stage 2 restarts at its own base, without warm-up, and decays to 0 over its 20 steps
    assert lr_at_step(T, spe, c, 2) == pytest.approx(0.01, rel=1e-12)
    assert lr_at_step(T + 10, spe, c, 2) == pytest.approx(0.005, rel=1e-12)
    assert lr_at_step(T + 20, spe, c, 2) == pytest.approx(0.0, abs=1e-15)
    lrs = [lr_at_step(s, spe, c, 1) for s in range(10, T)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # after warm-up: strictly decreasing


def test_lr_no_warmup():
    c = cfg(stage1_epochs=4, stage2_epochs=0, stage1_lr=0.2, warmup_epochs=0)
    assert lr_at_step(0, 3, c, 1) == 0.2


def test_lr_stage2_cosine_restart_on_a_step_schedule():
    """stage2_schedule="cosine": stage 2 restarts at stage2_lr and decays by cosine to 0 over the
    stage, whatever the run's schedule; stage 1 keeps the step schedule."""
    c = cfg(stage1_epochs=16, stage2_epochs=4, stage1_lr=0.1, stage2_lr=0.01, schedule="step",
            lr_milestones=(16, 18), warmup_epochs=0, stage2_schedule="cosine")
    spe = 10
    assert lr_at_step(16 * spe, spe, c, 2) == pytest.approx(0.01)
    assert lr_at_step(18 * spe, spe, c, 2) == pytest.approx(0.005)  # half-way: (1 + cos(pi/2)) / 2
    assert lr_at_step(15 * spe, spe, c, 1) == pytest.approx(0.1)
    inherit = dataclasses.replace(c, stage2_schedule="inherit")
    assert lr_at_step(16 * spe, spe, inherit, 2) == pytest.approx(0.01 * 0.01)  # step: x0.01 at 16


def test_lr_step_decay_factor_follows_mislas_stage1():
    """lr_decay=0.1 with milestones (160, 180) inside a 200-epoch stage 1: MiSLAS's stage-1 schedule
    (x0.1 after epoch 160, x0.01 after 180); the default 0.01 is LDAM-DRW's x0.01, x0.0001, exactly."""
    c = cfg(stage1_epochs=200, stage2_epochs=10, stage1_lr=0.1, schedule="step", lr_milestones=(160, 180),
            lr_decay=0.1, warmup_epochs=5)
    spe = 10
    lr = lambda epoch: lr_at_step(int(epoch * spe), spe, c, 1)
    assert lr(159.9) == pytest.approx(0.1)
    assert lr(160) == pytest.approx(0.01)
    assert lr(180) == pytest.approx(0.001)
    ldam = dataclasses.replace(c, lr_decay=0.01)
    assert lr_at_step(160 * spe, spe, ldam, 1) == 0.1 * 1e-2
    assert lr_at_step(180 * spe, spe, ldam, 1) == 0.1 * 1e-4


def test_lr_step_milestones():
    c = cfg(stage1_epochs=150, stage2_epochs=50, stage1_lr=0.1, stage2_lr=0.01, schedule="step",
            warmup_epochs=5)
    spe = 10
    lr = lambda epoch, stage: lr_at_step(int(epoch * spe), spe, c, stage)
    assert lr_at_step(0, spe, c, 1) == pytest.approx(0.1 / 50, rel=1e-12)  # warm-up applies
    assert lr(5, 1) == pytest.approx(0.1)
    assert lr(149.9, 1) == pytest.approx(0.1)
    # milestones are global epochs: 160 and 180 fall in stage 2 here
    assert lr(150, 2) == pytest.approx(0.01)
    assert lr(159.9, 2) == pytest.approx(0.01)
    assert lr(160, 2) == pytest.approx(0.01 * 0.01, rel=1e-12)
    assert lr(179.9, 2) == pytest.approx(0.01 * 0.01, rel=1e-12)
    assert lr(180, 2) == pytest.approx(0.01 * 0.0001, rel=1e-12)
    assert lr(199.9, 2) == pytest.approx(0.01 * 0.0001, rel=1e-12)
    # in stage 1 (a 200-epoch stage 1, as in LDAM-DRW's schedule)
    c1 = cfg(stage1_epochs=200, stage2_epochs=0, stage1_lr=0.1, schedule="step", warmup_epochs=5)
    assert lr_at_step(159 * spe, spe, c1, 1) == pytest.approx(0.1)
    assert lr_at_step(160 * spe, spe, c1, 1) == pytest.approx(0.001, rel=1e-12)
    assert lr_at_step(180 * spe, spe, c1, 1) == pytest.approx(0.00001, rel=1e-12)
