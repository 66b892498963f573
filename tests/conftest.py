"""Shared fixtures: a small synthetic image-folder dataset (always), the real CIFAR-10 when it is on
this machine ($CIFAR10_ROOT, or data/cifar10 as .ci/run extracts it), and live and dead pids for
the lock tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "tools"))  # the developer tools, tested as modules

SYNTH_CLASSES = ("ant", "bee", "cat", "dog")
SYNTH_TRAIN, SYNTH_TEST = 60, 15  # images per class
# The tests' training runs use fp32: where a CPU has no native bf16, bf16 autocast (the default) is
# emulated and a tiny run takes about 8x longer. test_tiny_end_to_end also runs the default.
TEST_PRECISION = "fp32"


def make_image_folder(root: Path, classes=SYNTH_CLASSES, n_train=SYNTH_TRAIN, n_test=SYNTH_TEST,
                      seed: int = 0, size: int = 32) -> Path:
    """Write a learnable image-folder dataset: each class is a noisy colour with a class-specific
    bright square, saved as PNG (lossless, so tests can compare pixels exactly)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.int16)
                img[..., c % 3] += 120
                r0 = (c * 7) % (size - 8)
                img[r0:r0 + 8, r0:r0 + 8] += 70
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"{i:04d}.png")
    return root


def make_cifar100_folder(parent: Path, n_train: int = 14, n_test: int = 3, num_classes: int = 100, seed: int = 0) -> Path:
    """Write ``parent/cifar-100-python`` exactly as torchvision extracts CIFAR-100: pickles ``train``
    and ``test`` (``data``: N x 3072 uint8 rows, red then green then blue planes; ``fine_labels``,
    ``coarse_labels``, ``filenames``, ``batch_label``) and ``meta`` (``fine_label_names``,
    ``coarse_label_names``). Each class is a noisy colour with a class-specific bright square."""
    import pickle

    rng = np.random.default_rng(seed)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.repeat(np.arange(num_classes), n)
        img = rng.integers(0, 60, (len(labels), 32, 32, 3)).astype(np.int16)
        for i, c in enumerate(labels):
            img[i, ..., c % 3] += 60 + (c * 37) % 100
            r0 = (c * 7) % 24
            img[i, r0:r0 + 8, (c * 11) % 24:(c * 11) % 24 + 8] += 70
        rows = np.clip(img, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(len(labels), 3072)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": rows, "fine_labels": labels.tolist(), "coarse_labels": (labels // 5).tolist(),
                         "filenames": [f"img_{i}.png" for i in range(len(labels))],
                         "batch_label": f"{split}ing batch 1 of 1"}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine_{c}" for c in range(num_classes)],
                     "coarse_label_names": [f"coarse_{c}" for c in range(num_classes // 5)]}, f)
    return folder


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("synthetic"))


def _real_root() -> Path | None:
    for cand in (os.environ.get("CIFAR10_ROOT"), ROOT / "data" / "cifar10"):
        if cand and ((Path(cand) / "train").is_dir() or (Path(cand) / "cifar-10-batches-py").is_dir()):
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def real_root() -> Path:
    root = _real_root()
    if root is None:
        pytest.skip("real CIFAR-10 not found: set CIFAR10_ROOT or extract ../shared/data into data/cifar10")
    return root


@pytest.fixture
def tiny_run_kwargs(synthetic_root, tmp_path) -> dict:
    """Settings for a run of a few seconds on the synthetic data."""
    return dict(data_root=str(synthetic_root), log_dir=str(tmp_path / "runs"), stage1_epochs=2,
                stage2_epochs=2, batch_size=32, val_per_class=5, stat_per_class=5, imb_factor=0.2, device="cpu",
                quiet=True, eval_batch_size=64, precision=TEST_PRECISION)


def lock_text(pid: int, host: str | None = None, job: str = "-") -> str:
    """A run lock's content, as process ``pid`` writes it in launcher job ``job``:
    ``<host> <pid> <identity> <job>``."""
    import runfiles
    return runfiles.lock_text(pid, host, job)


@pytest.fixture
def live_pid():
    """The pid of a live process (a sleep)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    """A pid that no process has (one that has exited and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: the pid is free
    return proc.pid
