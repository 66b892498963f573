"""Models for 32x32 images, looked up by name with :func:`get_model`.

The ResNets are He et al. (2016)'s CIFAR ResNets: a 3x3 stem with 16 channels, three stages of
BasicBlocks with 16/32/64 channels (stride 1/2/2), global average pooling and a linear classifier.
Shortcuts that change shape are "option A" (strided identity, zero-padded channels: no parameters),
as in the paper and in LDAM-DRW's code. Depth counts the weighted layers: 1 stem conv + 2 per
block + 1 linear.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


NORMED_INITS = ("unit", "uniform")


class NormedLinear(nn.Module):
    """Cosine classifier: ``z_c = <x / ||x||, w_c / ||w_c||>`` in [-1, 1], no bias (LDAM-DRW's
    ``NormedLinear``, used with the LDAM loss's scale ``s``).

    ``init="unit"`` (default) matches the reference: rows drawn from U(-1, 1), then each class
    vector ``w_c`` scaled to unit norm. ``init="uniform"`` keeps the raw U(-1, 1) rows (norm about
    ``sqrt(in_features / 3)``, 4.6 for 64 features), this project's earlier init. The forward pass
    is scale-invariant in ``w_c``, so SGD's angular step shrinks as ``1 / ||w_c||^2``: the two inits
    train the classifier at different effective learning rates.
    """

    def __init__(self, in_features: int, out_features: int, init: str = "unit"):
        super().__init__()
        if init not in NORMED_INITS:
            raise ValueError(f"init={init!r}; valid: {', '.join(NORMED_INITS)}")
        weight = torch.empty(out_features, in_features).uniform_(-1, 1)
        if init == "unit":
            weight = F.normalize(weight, dim=1)
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


class LogitScale(nn.Module):
    """Learnable per-class scale of the logits, ``z'_c = s_c * z_c`` with ``s`` initialised to ones
    (so it starts as the identity): MiSLAS's stage-2 ``LearnableWeightScaling``, which it trains
    together with the classifier (``nn.Sequential(fc, LogitScale(C))`` puts it after ``fc``)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_classes))

    def forward(self, z):
        return z * self.scale


def fp32_classifier(fc: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The classifier layer in float32 even under bf16 autocast: bf16 keeps ~3 significant digits,
    which costs a cosine classifier ~0.03 after LDAM's scale of 30, and the losses read these logits."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        return fc(features.float())


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.extra = stride, planes - in_planes

    def shortcut(self, x):
        if self.stride == 1 and self.extra == 0:
            return x
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``blocks[s]`` BasicBlocks in stage s; depth = 2 * sum(blocks) + 2."""

    def __init__(self, blocks: tuple[int, int, int], num_classes: int = 10):
        super().__init__()
        self.blocks = tuple(blocks)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, n, stride in zip((16, 32, 64), blocks, (1, 2, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x):
        return fp32_classifier(self.fc, self.features(x))


class SimpleCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool blocks (32/64/128 channels), global pooling, linear classifier."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        chans, layers, c_in = (32, 64, 128), [], 3
        for c in chans:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x):
        return fp32_classifier(self.fc, self.features(x))


def resnet10(num_classes=10):
    """ResNet-10: blocks (1, 1, 2) -> 1 + 2*4 + 1 = 10 weighted layers."""
    return CifarResNet((1, 1, 2), num_classes)


def resnet15(num_classes=10):
    """ResNet-15: blocks (2, 2, 3) -> 1 + 2*7 + 1 = 16 weighted layers. The name is the seed
    project's; every member of this family has an even depth, and this is the one between
    ResNet-10 and ResNet-20."""
    return CifarResNet((2, 2, 3), num_classes)


def resnet20(num_classes=10):
    """ResNet-20 (He et al. 2016): blocks (3, 3, 3), 20 weighted layers, 0.27M parameters."""
    return CifarResNet((3, 3, 3), num_classes)


def resnet32(num_classes=10):
    """ResNet-32 (He et al. 2016), the long-tail literature's model: blocks (5, 5, 5), 0.46M parameters."""
    return CifarResNet((5, 5, 5), num_classes)


MODELS = {"simplecnn": SimpleCNN, "resnet10": resnet10, "resnet15": resnet15,
          "resnet20": resnet20, "resnet32": resnet32}


def get_model(name: str, num_classes: int = 10, normed_classifier: bool = False,
              normed_init: str = "unit") -> nn.Module:
    """Build a model by name; an unknown name raises ``ValueError`` listing the valid ones.

    ``normed_classifier=True`` swaps the last linear layer for a :class:`NormedLinear` initialised
    with ``normed_init``."""
    key = str(name).lower()
    if key not in MODELS:
        raise ValueError(f"model_name={name!r}; valid: {', '.join(MODELS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2")
    model = MODELS[key](num_classes=num_classes)
    if normed_classifier:
        model.fc = NormedLinear(model.fc.in_features, num_classes, normed_init)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
