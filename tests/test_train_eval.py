"""Metrics against hand-computed cases, calibration, evaluation, and one training epoch (and its
mixup, SAM, MaxNorm and BatchNorm options). The learning-rate schedule: test_methods.py."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import train_eval
from data_loader import DeviceBatches, Normalizer
from losses import focal_loss, loss_denominator
from train_eval import (NonFiniteError, class_groups, classification_metrics, draw_mixup, evaluate,
                        expected_calibration_error, mix_images, resolve_device, sam_perturb_, train_one_epoch)


# ----------------------------------------------------------------------------------------------
# Groups and metrics

def test_class_groups_cifar10_long_tail():
    g = class_groups([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    assert g["head"].tolist() == [0, 1, 2, 3, 4] and g["tail"].tolist() == [5, 6, 7, 8, 9]
    assert g["many"].tolist() == [0, 1, 2]  # 3 / 4 / 3
    assert g["medium"].tolist() == [3, 4, 5, 6]
    assert g["few"].tolist() == [7, 8, 9]


def test_class_groups_rank_by_count_not_index():
    g = class_groups([10, 100, 20, 50, 5])
    # ranking by count: 1, 3, 2, 0, 4; tail = the rarer C // 2 = 2 classes
    assert g["head"].tolist() == [1, 2, 3] and g["tail"].tolist() == [0, 4]
    # k = floor(0.3 * 5 + 0.5) = 2
    assert g["many"].tolist() == [1, 3] and g["medium"].tolist() == [2] and g["few"].tolist() == [0, 4]
    # ties: lower index first
    t = class_groups([7, 7, 7, 7])
    assert t["head"].tolist() == [0, 1] and t["tail"].tolist() == [2, 3]


def test_class_groups_never_split_equal_counts():
    """head_tail: five classes of 4900 and five of 49. Many/medium/few keep each count together."""
    g = class_groups([4900] * 5 + [49] * 5)
    assert g["many"].tolist() == [0, 1, 2, 3, 4] and g["few"].tolist() == [5, 6, 7, 8, 9]
    assert g["medium"].tolist() == []
    # a block of ties goes where most of its ranks fall: ranks 2..5 share a count; rank 2 is
    # many's, ranks 3..5 medium's (3..6 of 10), so the whole block is medium
    g = class_groups([100, 90, 50, 50, 50, 50, 20, 10, 5, 1])
    assert g["many"].tolist() == [0, 1] and g["medium"].tolist() == [2, 3, 4, 5, 6]
    for name in ("many", "medium", "few"):
        others = set(range(10)) - set(g[name].tolist())
        counts = np.array([100, 90, 50, 50, 50, 50, 20, 10, 5, 1])
        assert not set(counts[g[name]]) & set(counts[list(others)]), name


def test_metrics_empty_group_is_nan_not_an_error():
    # C = 4: 1 / 2 / 1 ranks. Each tied pair straddles two groups evenly and goes to its first
    # rank's group: many = {0, 1}, medium = {2, 3}, few = none
    out = classification_metrics([0, 1, 2, 3], [0, 1, 2, 2], [10, 10, 1, 1])
    assert math.isnan(out["few_acc"])
    assert out["many_acc"] == 1.0 and out["medium_acc"] == 0.5


def test_class_groups_cifar100_sizes():
    g = class_groups(list(range(100, 0, -1)))
    assert [len(g[k]) for k in ("many", "medium", "few")] == [30, 40, 30]
    assert [len(g[k]) for k in ("head", "tail")] == [50, 50]


def test_metrics_hand_computed():
    counts = [100, 50, 20, 10]  # head {0, 1}, tail {2, 3}; many {0}, medium {1, 2}, few {3}
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]
    y_pred = [0, 0, 0, 1, 1, 0, 2, 3, 3, 3]
    # class 0: TP 3 FP 1 FN 1 -> P 3/4 R 3/4 F1 3/4
    # class 1: TP 1 FP 1 FN 1 -> P 1/2 R 1/2 F1 1/2
    # class 2: TP 1 FP 0 FN 1 -> P 1   R 1/2 F1 2/3
    # class 3: TP 2 FP 1 FN 0 -> P 2/3 R 1   F1 4/5
    m = classification_metrics(y_true, y_pred, counts)
    assert m["acc"] == pytest.approx(0.7)
    assert m["precision"].tolist() == pytest.approx([3 / 4, 1 / 2, 1, 2 / 3])
    assert m["recall"].tolist() == pytest.approx([3 / 4, 1 / 2, 1 / 2, 1])
    assert m["f1"].tolist() == pytest.approx([3 / 4, 1 / 2, 2 / 3, 4 / 5])
    assert m["macro_f1"] == pytest.approx((3 / 4 + 1 / 2 + 2 / 3 + 4 / 5) / 4)
    assert m["head_macro_f1"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m["tail_macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["many_acc"] == pytest.approx(3 / 4)
    assert m["medium_acc"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert m["few_acc"] == pytest.approx(1.0)
    assert m["confusion"].tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 2]]
    assert m["support"].tolist() == [4, 2, 2, 2]


def test_metrics_unpredicted_and_absent_classes_count_as_zero():
    # class 2 is never predicted, class 3 never occurs: both F1 = 0 and still in the macro mean
    m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 0], [40, 30, 20, 10])
    assert m["f1"].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0, 0.0])
    assert m["macro_f1"] == pytest.approx(1 / 3)
    assert m["tail_macro_f1"] == 0.0
    assert m["confusion"].shape == (4, 4)


def test_metrics_ten_classes_groups():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    y_true = np.repeat(np.arange(10), 10)
    y_pred = y_true.copy()
    y_pred[y_true >= 7] = 0  # the three rarest classes are always wrong
    m = classification_metrics(y_true, y_pred, counts)
    assert m["acc"] == pytest.approx(0.7)
    assert m["many_acc"] == 1.0 and m["medium_acc"] == 1.0 and m["few_acc"] == 0.0
    # class 0 takes 30 false positives: P = 10/40, F1 = 2 * 0.25 / 1.25 = 0.4
    assert m["f1"][0] == pytest.approx(0.4)
    assert m["head_macro_f1"] == pytest.approx((0.4 + 4) / 5)
    assert m["tail_macro_f1"] == pytest.approx(2 / 5)


# ----------------------------------------------------------------------------------------------
# Evaluation and one epoch, on a model without BatchNorm (train and eval modes agree)

def _linear_model(C=3, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, C))


def _toy(n=30, C=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % C
    return x, y


def test_evaluate_loss_is_cross_entropy():
    x, y = _toy(40, 4)
    model = _linear_model(4)
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    counts = [40, 20, 10, 5]
    out = evaluate(model, x, y, norm, counts, batch_size=7, precision="fp32")
    with torch.no_grad():
        logits = model(norm(x))
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    ref = classification_metrics(y.numpy(), logits.argmax(1).numpy(), counts)
    for k in ("acc", "macro_f1", "tail_macro_f1", "head_macro_f1", "many_acc", "medium_acc", "few_acc"):
        assert out[k] == ref[k], k
    assert np.array_equal(out["confusion"], ref["confusion"])
    per_class = [F.cross_entropy(logits[y == c], y[y == c]).item() for c in range(4)]
    assert out["class_loss"].tolist() == pytest.approx(per_class, rel=1e-5)


def test_evaluate_gives_no_class_loss_for_a_class_the_split_lacks():
    x, y = _toy(30, 3)  # classes 0, 1, 2 only; the model has a fourth output
    model = _linear_model(4)
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    out = evaluate(model, x, y, norm, [40, 20, 10, 5], batch_size=8, precision="fp32")
    assert out["class_loss"][:3].isfinite().all() and math.isnan(out["class_loss"][3])  # not 0 (an easy class)
    assert out["support"].tolist() == [10, 10, 10, 0]


def test_train_one_epoch_reports_weighted_mean_and_per_class_loss():
    C = 3
    x, y = _toy(30, C)
    model = _linear_model(C)
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    batches = DeviceBatches(x, y, 8, norm, torch.Generator().manual_seed(0), augment=False)
    w = torch.tensor([1.0, 2.0, 5.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    lrs = []
    out = train_one_epoch(model, batches, opt, focal_loss, lambda s: lrs.append(s) or 0.0, 7, C,
                          class_weights=w, precision="fp32")
    assert out["steps"] == 4 and lrs == [7, 8, 9, 10]  # lr_at(step) for each global step
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # lr 0: unchanged
    with torch.no_grad():
        ce = F.cross_entropy(model(norm(x)), y, reduction="none")
    # the objective is the weighted mean over the epoch; class_loss is unweighted CE per class
    assert out["loss"] == pytest.approx(((w[y] * ce).sum() / w[y].sum()).item(), rel=1e-5)
    assert out["class_loss"].tolist() == pytest.approx([ce[y == c].mean().item() for c in range(C)], rel=1e-5)


def test_train_one_epoch_batch_mean_steps_on_sum_over_batch_size():
    """normalization="batch_mean" (cb_focal) minimises sum(w_y l) / N: one SGD step of lr 1 moves
    the weights by exactly minus that objective's gradient."""
    C = 3
    x, y = _toy(16, C, seed=2)
    w = torch.tensor([1.0, 3.0, 9.0])
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    for normalization, denom in (("batch_mean", lambda: float(len(y))), ("mean", lambda: w[y].sum())):
        model = _linear_model(C, seed=3)
        ref = _linear_model(C, seed=3)
        batches = DeviceBatches(x, y, 16, norm, torch.Generator().manual_seed(0), augment=False)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        train_one_epoch(model, batches, opt, focal_loss, lambda s: 1.0, 0, C, class_weights=w,
                        normalization=normalization)
        xb, yb = next(iter(DeviceBatches(x, y, 16, norm, torch.Generator().manual_seed(0), augment=False)))
        objective = (w[yb] * F.cross_entropy(ref(xb), yb, reduction="none")).sum() / denom()
        objective.backward()
        for p, r in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p.detach(), (r - r.grad).detach(), rtol=1e-5, atol=1e-6)


def test_train_one_epoch_frozen_backbone_batchnorm_follows_the_batches():
    """cRT: the backbone is frozen (no gradient) but in train mode, so its BatchNorm running
    statistics move with the batches, as in classifier-balancing's training loop."""
    from model import get_model
    C = 3
    x, y = _toy(24, C, seed=4)
    torch.manual_seed(0)
    model = get_model("resnet10", C)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.fc.parameters():
        p.requires_grad_(True)
    conv_before = model.conv1.weight.clone()
    bn_before = model.bn1.running_mean.clone()
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    batches = DeviceBatches(x, y, 8, norm, torch.Generator().manual_seed(0), augment=False)
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.1)
    train_one_epoch(model, batches, opt, focal_loss, lambda s: 0.1, 0, C)
    assert torch.equal(model.conv1.weight, conv_before)
    assert not torch.equal(model.bn1.running_mean, bn_before)


def test_train_one_epoch_lowers_the_loss():
    C = 3
    x, y = _toy(30, C, seed=1)
    model = _linear_model(C, seed=1)
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    batches = DeviceBatches(x, y, 30, norm, torch.Generator().manual_seed(0), augment=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = [train_one_epoch(model, batches, opt, focal_loss, lambda s: 0.1, 0, C)["loss"] for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


def test_train_one_epoch_stops_on_non_finite_loss():
    x, y = _toy(12, 3)
    model = _linear_model(3)
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    batches = DeviceBatches(x, y, 4, norm, torch.Generator().manual_seed(0), augment=False)
    with pytest.raises(NonFiniteError, match="loss"):
        train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), focal_loss,
                        lambda s: 0.1, 0, 3)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available here; use auto or cpu"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")


# ----------------------------------------------------------------------------------------------
# Calibration

def test_ece_hand_computed_with_15_bins():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.85, 0.1, 0.05], [0.3, 0.5, 0.2],
                          [0.2, 0.18, 0.62], [0.1, 0.88, 0.02], [0.91, 0.05, 0.04]])
    y = torch.tensor([0, 0, 1, 0, 1, 2])  # right, right, right, wrong, right, wrong
    # bins of width 1/15: (13/15, 14/15] holds 0.9, 0.88, 0.91 (2 right): |2 - 2.69| = 0.69;
    # (12/15, 13/15] holds 0.85 (right): 0.15; 0.5 (right): 0.5; 0.62 (wrong): 0.62
    want = (0.69 + 0.15 + 0.5 + 0.62) / 6
    assert expected_calibration_error(probs, y) == pytest.approx(want, rel=1e-5)
    # 10 bins pool 0.85 with 0.9 and 0.88, and 0.91 alone: a different number
    assert expected_calibration_error(probs, y, num_bins=10) == pytest.approx((0.37 + 0.91 + 0.5 + 0.62) / 6, rel=1e-5)


def test_ece_zero_when_calibrated_and_one_when_surely_wrong():
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[1.0, 0.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1, 0])) == pytest.approx(0.0, abs=1e-7)
    # a confidence of exactly 1 is in the last bin, (14/15, 1]
    assert expected_calibration_error(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == 1.0


def test_evaluate_reports_ece_of_the_softmax():
    x, y = _toy(40, 4)
    model = _linear_model(4)
    norm = Normalizer([0.5] * 3, [0.25] * 3, "cpu")
    out = evaluate(model, x, y, norm, [40, 20, 10, 5], batch_size=7, precision="fp32")
    with torch.no_grad():
        probs = torch.softmax(model(norm(x)), 1)
    assert out["ece"] == pytest.approx(expected_calibration_error(probs, y), rel=1e-6)
    assert 0.0 <= out["ece"] <= 1.0


# ----------------------------------------------------------------------------------------------
# One epoch's options: mixup, SAM, MaxNorm, frozen BatchNorm, per-group learning rates

def _bn_model(C=3, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 4 * 4, C))


class _WithFc(nn.Module):
    """A linear classifier named ``fc``, as the models of model.py name theirs."""
    def __init__(self, C=3):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, C)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _norm():
    return Normalizer([0.5] * 3, [0.25] * 3, "cpu")


def test_train_one_epoch_options_off_is_the_plain_step():
    """mixup, SAM, MaxNorm and frozen BN off: each step is forward, weighted sum / sum(w_y),
    backward, SGD step, bit for bit the loop written out here (BatchNorm statistics included)."""
    C = 3
    x, y = _toy(30, C, seed=5)
    w = torch.tensor([1.0, 2.0, 5.0])
    model, ref = _bn_model(C), _bn_model(C)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0))
    ref_batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0))
    for _ in range(2):
        out = train_one_epoch(model, batches, opt, focal_loss, lambda s: 0.05, 0, C, class_weights=w,
                              mixup_alpha=0.0, sam_rho=0.0, max_norm=None, freeze_bn_stats=False)
        ref.train()
        total, den = 0.0, 0.0
        for xb, yb in ref_batches:
            loss_sum = focal_loss(ref(xb), yb, w, "sum")
            loss = loss_sum / loss_denominator(yb, w, "mean")
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()
            total, den = total + loss_sum.item(), den + w[yb].sum().item()
        assert out["loss"] == pytest.approx(total / den, rel=1e-6)
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_mix_images_hand_made():
    x = torch.tensor([[1.0], [2.0], [3.0]])
    got = mix_images(x, 0.25, torch.tensor([2, 0, 1]))  # 0.25 x + 0.75 x[perm]
    assert got.tolist() == [[2.5], [1.25], [2.25]]


def test_draw_mixup_same_generator_state_same_draws():
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    lam, perm = draw_mixup(8, 0.5, g)
    again = torch.Generator()
    again.set_state(state)
    lam2, perm2 = draw_mixup(8, 0.5, again)
    assert lam == lam2 and torch.equal(perm, perm2)
    assert 0.0 < lam < 1.0 and sorted(perm.tolist()) == list(range(8))
    lam3, perm3 = draw_mixup(8, 0.5, g)  # the generator moved on
    assert lam3 != lam


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_draw_mixup_lam_is_beta_alpha_alpha(alpha):
    g = torch.Generator().manual_seed(0)
    lams = np.array([draw_mixup(2, alpha, g)[0] for _ in range(4000)])
    assert lams.mean() == pytest.approx(0.5, abs=0.02)
    assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), abs=0.01)  # Beta(a, a): 1 / (4 (2a + 1))


def test_train_one_epoch_mixup_step_by_hand():
    """One batch: the step descends lam * CE_w(z, y) + (1 - lam) * CE_w(z, y_perm) at the mixed
    images, with lam and perm the generator's; class_loss is the share-weighted CE per class."""
    C = 3
    x, y = _toy(8, C, seed=6)
    w = torch.tensor([1.0, 2.0, 4.0])
    model, ref = _linear_model(C, seed=2), _linear_model(C, seed=2)
    mix_gen = torch.Generator().manual_seed(9)
    lam, perm = draw_mixup(8, 0.4, copy.deepcopy(mix_gen))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0), augment=False)
    out = train_one_epoch(model, batches, opt, focal_loss, lambda s: 1.0, 0, C, class_weights=w,
                          mixup_alpha=0.4, mixup_generator=mix_gen)
    xb, yb = next(iter(DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0), augment=False)))
    z = ref(lam * xb + (1 - lam) * xb[perm])
    y_b = yb[perm]
    objective = lam * F.cross_entropy(z, yb, weight=w) + (1 - lam) * F.cross_entropy(z, y_b, weight=w)
    objective.backward()
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), (r - r.grad).detach(), rtol=1e-5, atol=1e-6)
    assert out["loss"] == pytest.approx(objective.item(), rel=1e-5)
    ce_a = F.cross_entropy(z.detach(), yb, reduction="none")
    ce_b = F.cross_entropy(z.detach(), y_b, reduction="none")
    for c in range(C):
        num = lam * ce_a[yb == c].sum() + (1 - lam) * ce_b[y_b == c].sum()
        den = lam * (yb == c).sum() + (1 - lam) * (y_b == c).sum()
        assert out["class_loss"][c].item() == pytest.approx((num / den).item(), rel=1e-5)


def test_mixup_run_resumed_mid_way_equals_the_uninterrupted_run():
    """The draws come from the batches' generator, which DeviceBatches.state_dict saves."""
    C = 3
    x, y = _toy(24, C, seed=7)

    def start(seed_model=3):
        model = _bn_model(C, seed_model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0))

    def epoch(model, opt, batches):
        return train_one_epoch(model, batches, opt, focal_loss, lambda s: 0.05, 0, C, mixup_alpha=0.5,
                               mixup_generator=batches.generator)

    whole = start()
    epoch(*whole)
    last = epoch(*whole)
    first = start()
    epoch(*first)
    snap = copy.deepcopy((first[0].state_dict(), first[1].state_dict(), first[2].state_dict()))
    resumed = start(seed_model=4)  # other weights and a fresh generator, all overwritten by the snapshot
    resumed[2].generator.manual_seed(123)
    resumed[0].load_state_dict(snap[0])
    resumed[1].load_state_dict(snap[1])
    resumed[2].load_state_dict(snap[2])
    again = epoch(*resumed)
    assert again["loss"] == last["loss"]
    for a, b in zip(whole[0].state_dict().values(), resumed[0].state_dict().values()):
        assert torch.equal(a, b)


def test_mixup_needs_a_generator():
    x, y = _toy(8, 3)
    model = _linear_model(3)
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0), augment=False)
    with pytest.raises(ValueError, match="mixup_generator"):
        train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), focal_loss,
                        lambda s: 0.1, 0, 3, mixup_alpha=1.0)


def test_sam_perturb_normalises_by_the_norm_over_all_parameters():
    p1 = nn.Parameter(torch.tensor([1.0]))
    p2 = nn.Parameter(torch.tensor([2.0, -1.0]))
    p1.grad, p2.grad = torch.tensor([3.0]), torch.tensor([0.0, 4.0])  # ||g|| = 5 over both
    saved = sam_perturb_([p1, p2], rho=0.5)  # e = 0.5 * g / 5 = (0.3), (0, 0.4)
    torch.testing.assert_close(p1.detach(), torch.tensor([1.3]))
    torch.testing.assert_close(p2.detach(), torch.tensor([2.0, -0.6]))
    assert saved[0].tolist() == [1.0] and saved[1].tolist() == [2.0, -1.0]


def test_train_one_epoch_sam_steps_from_w_with_the_gradient_at_w_plus_e():
    """Plain SGD (no momentum): w <- w - lr * grad L(w + e), e = rho * g / ||g||, g = grad L(w)."""
    C, lr, rho = 3, 0.5, 0.3
    x, y = _toy(8, C, seed=8)
    model, ref = _linear_model(C, seed=4), _linear_model(C, seed=4)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0), augment=False)
    out = train_one_epoch(model, batches, opt, focal_loss, lambda s: lr, 0, C, sam_rho=rho)
    xb, yb = next(iter(DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0), augment=False)))
    w = [p.detach().clone() for p in ref.parameters()]
    loss_w = F.cross_entropy(ref(xb), yb)
    g = torch.autograd.grad(loss_w, list(ref.parameters()))
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    with torch.no_grad():
        for p, gi in zip(ref.parameters(), g):
            p.add_(rho * gi / norm)  # the ascent point w + e
    g_e = torch.autograd.grad(F.cross_entropy(ref(xb), yb), list(ref.parameters()))
    for p, wi, gi, gei in zip(model.parameters(), w, g, g_e):
        torch.testing.assert_close(p.detach(), wi - lr * gei, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(p.detach(), wi - lr * gi, rtol=1e-4)  # not the plain step
    assert out["loss"] == pytest.approx(loss_w.item(), rel=1e-6)  # reported at w, the first pass


def test_sam_restores_the_weights_exactly_before_the_step():
    """lr 0: the step changes nothing, so the weights after it are the ones before SAM's ascent,
    bit for bit (w + e - e would round)."""
    x, y = _toy(16, 3, seed=9)
    model = _bn_model(3)
    before = [p.detach().clone() for p in model.parameters()]
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0))
    train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.0), focal_loss,
                    lambda s: 0.0, 0, 3, sam_rho=0.8)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("rho, passes", [(0.0, 1), (0.5, 2)])
def test_sam_batchnorm_statistics_follow_both_passes(rho, passes):
    """As Saddle-LongTail's loop: train mode in both passes, so BN counts two batches per step."""
    x, y = _toy(8, 3, seed=10)
    model = _bn_model(3)
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0))
    train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), focal_loss,
                    lambda s: 0.1, 0, 3, sam_rho=rho)
    assert model[1].num_batches_tracked.item() == passes


def test_train_one_epoch_max_norm_projects_the_classifier_rows_after_the_epoch():
    x, y = _toy(16, 3, seed=11)
    model = _WithFc(3)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(3, 48, generator=torch.Generator().manual_seed(0)))
        model.fc.weight[0] *= 0.01  # a row inside the ball
    before = model.fc.weight.detach().clone()
    radius = 0.5 * before.norm(dim=1).max().item()
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0), augment=False)
    train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.0), focal_loss,
                    lambda s: 0.0, 0, 3, max_norm=radius)
    after = model.fc.weight.detach()
    assert torch.equal(after[0], before[0])
    over = before.norm(dim=1) > radius
    assert over.sum() >= 1
    torch.testing.assert_close(after[over].norm(dim=1), torch.full((int(over.sum()),), radius))
    cos = F.cosine_similarity(after[over], before[over], dim=1)
    torch.testing.assert_close(cos, torch.ones_like(cos))


def test_train_one_epoch_freeze_bn_stats_keeps_the_running_statistics():
    x, y = _toy(16, 3, seed=12)
    model = _bn_model(3)
    bn = model[1]
    stats = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    conv = model[0].weight.detach().clone()
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0))
    train_one_epoch(model, batches, torch.optim.SGD(model.parameters(), lr=0.1), focal_loss,
                    lambda s: 0.1, 0, 3, freeze_bn_stats=True)
    assert all(torch.equal(a, b) for a, b in zip(stats, [bn.running_mean, bn.running_var, bn.num_batches_tracked]))
    assert not bn.training and model.training
    assert not torch.equal(model[0].weight, conv)  # the rest still trained


def test_train_one_epoch_scales_the_lr_of_a_group_with_lr_scale():
    """MiSLAS's stage 2: the classifier at lr_factor times the rate, the logit scale at the rate."""
    x, y = _toy(8, 3, seed=13)
    model = _linear_model(3)
    opt = torch.optim.SGD([{"params": [model[1].weight], "lr_scale": 0.5}, {"params": [model[1].bias]}], lr=1.0)
    batches = DeviceBatches(x, y, 8, _norm(), torch.Generator().manual_seed(0), augment=False)
    train_one_epoch(model, batches, opt, focal_loss, lambda s: 0.2, 0, 3)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]


# ----------------------------------------------------------------------------------------------
# bf16 on a CPU without native bf16

def test_bf16_is_emulated_follows_the_cpu_probe(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert train_eval.bf16_is_emulated(torch.device("cpu")) is (not native)
        assert train_eval.bf16_is_emulated(torch.device("cuda")) is False  # a GPU's bf16 is its own


def test_precision_advice_names_the_fix_only_where_bf16_is_emulated(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(train_eval, "bf16_is_emulated", lambda device: True)
    advice = train_eval.precision_advice(cpu, "bf16")
    assert "emulated" in advice and "--precision fp32" in advice and "\n" not in advice
    assert train_eval.precision_advice(cpu, "fp32") is None
    monkeypatch.setattr(train_eval, "bf16_is_emulated", lambda device: False)
    assert train_eval.precision_advice(cpu, "bf16") is None
