"""Model registry, parameter counts, the ResNet family's shapes, and the classifiers: the fp32
classifier under autocast, LogitScale, and NormedLinear against LDAM-DRW's."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.testing import assert_close

from model import MODELS, LogitScale, NormedLinear, count_parameters, get_model


def weighted_layers(m: nn.Module) -> int:
    """Depth as He et al. count it: convolutions and linear layers (shortcuts have no weights)."""
    return sum(isinstance(x, (nn.Conv2d, nn.Linear)) for x in m.modules())


@pytest.mark.parametrize("name, params", [("resnet20", 269_722), ("resnet32", 464_154)])
def test_he_et_al_parameter_counts(name, params):
    # He et al. (2016), Table 6: 0.27M and 0.46M parameters
    m = get_model(name, 10)
    assert count_parameters(m) == params
    assert weighted_layers(m) == int(name[len("resnet"):])


@pytest.mark.parametrize("name, blocks, depth", [
    ("resnet10", (1, 1, 2), 10), ("resnet15", (2, 2, 3), 16),
    ("resnet20", (3, 3, 3), 20), ("resnet32", (5, 5, 5), 32)])
def test_resnet_blocks_and_depth(name, blocks, depth):
    m = get_model(name, 10)
    assert m.blocks == blocks
    assert weighted_layers(m) == depth == 2 * sum(blocks) + 2


def test_resnet_stage_widths():
    m = get_model("resnet20", 10)
    assert [m.conv1.out_channels] + [b.conv2.out_channels for b in m.layers] == [16] + [16] * 3 + [32] * 3 + [64] * 3
    assert m.fc.in_features == 64


@pytest.mark.parametrize("normed", [False, True])
@pytest.mark.parametrize("num_classes", [7, 100])  # 100: CIFAR-100
@pytest.mark.parametrize("name", list(MODELS))
def test_forward_shape_and_num_classes(name, num_classes, normed):
    m = get_model(name, num_classes, normed_classifier=normed).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_num_classes_changes_only_the_classifier():
    # 64 features -> C outputs: 65 parameters per class
    assert count_parameters(get_model("resnet32", 100)) - count_parameters(get_model("resnet32", 10)) == 90 * 65


def test_name_is_case_insensitive():
    assert count_parameters(get_model("ResNet20", 10)) == 269_722


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError) as e:
        get_model("resnet50", 10)
    msg = str(e.value)
    assert "resnet50" in msg
    for name in ("simplecnn", "resnet10", "resnet15", "resnet20", "resnet32"):
        assert name in msg


@pytest.mark.parametrize("num_classes", [1, 0, 2.5])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        get_model("simplecnn", num_classes)


def test_normed_classifier_rows_have_unit_norm_at_init():
    m = get_model("resnet32", 10, normed_classifier=True)
    assert torch.allclose(m.fc.weight.norm(dim=1), torch.ones(10), atol=1e-6)
    old = get_model("resnet32", 10, normed_classifier=True, normed_init="uniform")
    assert old.fc.weight.norm(dim=1).min() > 2  # U(-1, 1) rows of 64: norm about 4.6


@pytest.mark.parametrize("normed", [False, True])
def test_classifier_runs_in_fp32_under_bf16_autocast(normed):
    """The features may be bf16; the classifier layer and so the logits are float32, equal to the
    classifier applied to the float32-cast features outside autocast."""
    torch.manual_seed(0)
    m = get_model("resnet10", 10, normed_classifier=normed).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(x)
        feats = m.features(x)
    assert logits.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(logits, m.fc(feats.float()))


def test_logit_scale_starts_as_identity_and_scales_each_class():
    """MiSLAS's learnable weight scaling: z'_c = s_c z_c, s = 1 at init; one parameter per class."""
    torch.manual_seed(0)
    m = get_model("resnet10", 3).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        z = m(x)
        m.fc = nn.Sequential(m.fc, LogitScale(3))
        assert torch.equal(m(x), z)
        m.fc[1].scale.copy_(torch.tensor([2.0, 0.5, -1.0]))
        assert torch.equal(m(x), z * torch.tensor([2.0, 0.5, -1.0]))
    assert count_parameters(LogitScale(3)) == 3


# ----------------------------------------------------------------------------------------------
# NormedLinear against the reference: _RefNormedLinear re-implements kaidic/LDAM-DRW's NormedLinear
# (models/resnet_cifar.py) in its style; ours must give unit-norm class vectors at init and the same
# cosine forward. (The losses against their references: test_losses.py.)

NORMED_SHAPES = [(64, 10), (3, 2), (128, 100)]  # (in_features, out_features)


# kaidic/LDAM-DRW models/resnet_cifar.py (NormedLinear: weight stored as (in, out))
class _RefNormedLinear(nn.Module):
    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


@pytest.mark.parametrize("d,c", NORMED_SHAPES, ids=[f"{d}to{c}" for d, c in NORMED_SHAPES])
def test_normed_linear_class_vectors_have_unit_norm_at_init(d, c):
    with torch.random.fork_rng():
        torch.manual_seed(d + c)
        ours, ref = NormedLinear(d, c), _RefNormedLinear(d, c)
    assert ours.weight.shape == (c, d)
    assert_close(ours.weight.norm(dim=1), torch.ones(c), rtol=0, atol=1e-5)
    assert_close(ref.weight.norm(dim=0), torch.ones(c), rtol=0, atol=1e-5)  # the reference's columns


@pytest.mark.parametrize("init", ["unit", "uniform"])
@pytest.mark.parametrize("d,c", NORMED_SHAPES, ids=[f"{d}to{c}" for d, c in NORMED_SHAPES])
def test_normed_linear_forward_matches_ldam_drw(d, c, init):
    with torch.random.fork_rng():
        torch.manual_seed(3 * d + c)
        ours = NormedLinear(d, c) if init == "unit" else NormedLinear(d, c, init=init)
        ref = _RefNormedLinear(d, c)
    with torch.no_grad():
        ref.weight.copy_(ours.weight.t())
    x = torch.randn(9, d, generator=torch.Generator().manual_seed(d))
    with torch.no_grad():
        assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_normed_linear_uniform_init_keeps_the_old_uniform_rows():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layer = NormedLinear(64, 10, init="uniform")
    w = layer.weight.detach()
    assert w.abs().max() <= 1.0
    norms = w.norm(dim=1)
    assert (norms - 1).abs().min() > 0.5  # about sqrt(64 / 3) = 4.6, nowhere near 1
