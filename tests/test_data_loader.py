"""Data: sources and their uint8 cache, bad data (corrupt images, empty or mismatched class folders,
no dataset at data_root), the imbalanced subsets and the on-device batches."""
from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

import data_loader
from conftest import make_cifar100_folder, make_image_folder
from data_loader import DataError, DeviceBatches, Normalizer, class_counts, load_dataset, make_split

CIFAR10_LT_001 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


# ----------------------------------------------------------------------------------------------
# Class counts

@pytest.mark.parametrize("imb_factor, counts, total", [
    (0.01, CIFAR10_LT_001, 12406),
    (0.02, [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100], 13996),
    (0.1, [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500], 20431),
    (1.0, [5000] * 10, 50000),
])
def test_long_tail_counts_cifar10(imb_factor, counts, total):
    assert class_counts("long_tail", imb_factor, 5000, 10) == counts
    assert sum(counts) == total  # the totals the long-tail papers report


@pytest.mark.parametrize("imb_factor, total", [(0.01, 10847), (0.02, 12608), (0.1, 19573)])
def test_long_tail_counts_cifar100(imb_factor, total):
    counts = class_counts("long_tail", imb_factor, 500, 100)
    assert counts[0] == 500 and counts[-1] == int(500 * imb_factor)
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == total


def test_long_tail_counts_other_c():
    # n_i = int(n_max * f^(i / (C - 1))): C = 3, f = 0.25 -> 400, 200, 100; C = 2 -> first and last
    assert class_counts("long_tail", 0.25, 400, 3) == [400, 200, 100]
    assert class_counts("long_tail", 0.1, 300, 2) == [300, 30]


def test_head_tail_counts():
    assert class_counts("head_tail", 0.01, 5000, 10) == [5000] * 5 + [50] * 5
    assert class_counts("head_tail", 0.1, 5000, 10) == [5000] * 5 + [500] * 5
    # odd C: the first C - C // 2 classes are the head
    assert class_counts("head_tail", 0.1, 100, 5) == [100, 100, 100, 10, 10]
    assert class_counts("head_tail", 0.5, 60, 4) == [60, 60, 30, 30]


def test_make_split_reproduces_literature_counts_without_validation():
    y = np.repeat(np.arange(10), 5000)
    split = make_split(y, "long_tail", 0.01, n_max=5000, val_per_class=0, seed=0)
    assert split.counts == CIFAR10_LT_001
    assert np.bincount(y[split.train_idx], minlength=10).tolist() == CIFAR10_LT_001
    assert len(split.val_idx) == 0
    # n_max defaults to everything available
    assert make_split(y, "long_tail", 0.01, val_per_class=0).counts == CIFAR10_LT_001
    assert make_split(y, "long_tail", 0.01).counts[0] == 4900


@pytest.mark.parametrize("imbalance_type, imb_factor, C", [("long_tail", 0.01, 10), ("head_tail", 0.1, 10),
                                                           ("long_tail", 0.2, 3), ("head_tail", 0.5, 5)])
def test_make_split_disjoint_balanced_and_counted(imbalance_type, imb_factor, C):
    rng = np.random.default_rng(1)
    y = rng.permutation(np.repeat(np.arange(C), 700))  # labels in no particular order
    split = make_split(y, imbalance_type, imb_factor, n_max=500, val_per_class=50, seed=3)
    assert split.counts == class_counts(imbalance_type, imb_factor, 500, C)
    assert np.bincount(y[split.train_idx], minlength=C).tolist() == split.counts
    assert np.bincount(y[split.val_idx], minlength=C).tolist() == [50] * C  # balanced
    assert len(np.unique(split.train_idx)) == len(split.train_idx)
    assert len(np.unique(split.val_idx)) == len(split.val_idx)
    assert np.intersect1d(split.train_idx, split.val_idx).size == 0


def test_make_split_all_images_used_without_overlap():
    # n_max defaults to all that the validation split leaves: the head class uses every other image
    y = np.repeat(np.arange(5), 120)
    split = make_split(y, "long_tail", 0.1, val_per_class=20, seed=2)
    assert split.counts[0] == 100
    assert np.intersect1d(split.train_idx, split.val_idx).size == 0
    assert sorted(np.concatenate([split.train_idx[y[split.train_idx] == 0],
                                  split.val_idx[y[split.val_idx] == 0]]).tolist()) == list(range(120))


def test_make_split_seeded():
    y = np.repeat(np.arange(4), 300)
    a = make_split(y, "long_tail", 0.1, n_max=200, val_per_class=20, seed=7)
    b = make_split(y, "long_tail", 0.1, n_max=200, val_per_class=20, seed=7)
    c = make_split(y, "long_tail", 0.1, n_max=200, val_per_class=20, seed=8)
    assert np.array_equal(a.train_idx, b.train_idx) and np.array_equal(a.val_idx, b.val_idx)
    assert not np.array_equal(a.train_idx, c.train_idx)
    assert not np.array_equal(a.val_idx, c.val_idx)


def test_validation_is_drawn_before_the_subset():
    """The validation split does not depend on the scenario: it comes first, from all training images."""
    y = np.repeat(np.arange(4), 300)
    a = make_split(y, "long_tail", 0.01, n_max=200, val_per_class=20, seed=5)
    b = make_split(y, "head_tail", 0.5, n_max=100, val_per_class=20, seed=5)
    assert np.array_equal(a.val_idx, b.val_idx)


def test_validation_statistic_and_training_splits_are_disjoint():
    """The statistic split (dynamic weights' held-out statistic) is balanced, drawn after
    validation and before the subset, and shares no image with either (nor with test: another array)."""
    y = np.repeat(np.arange(5), 400)
    for scenario, imb in (("long_tail", 0.01), ("head_tail", 0.1)):
        s = make_split(y, scenario, imb, val_per_class=30, stat_per_class=20, seed=1)
        sets = [set(s.train_idx.tolist()), set(s.val_idx.tolist()), set(s.stat_idx.tolist())]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert np.bincount(y[s.stat_idx]).tolist() == [20] * 5
        assert s.counts[0] == 400 - 30 - 20  # n_max: what is left after both balanced splits
    a = make_split(y, "long_tail", 0.01, val_per_class=30, stat_per_class=20, seed=1)
    b = make_split(y, "head_tail", 0.5, val_per_class=30, stat_per_class=20, seed=1)
    assert np.array_equal(a.stat_idx, b.stat_idx) and np.array_equal(a.val_idx, b.val_idx)


def test_normalisation_constants_come_from_the_whole_training_split(synthetic_root):
    """Once per dataset, from every training image: the same for any scenario, seed or subset."""
    data = load_dataset(synthetic_root)
    mean, std = data_loader.channel_stats(data.train_x)
    assert data.mean == pytest.approx(mean) and data.std == pytest.approx(std)
    flat = data.train_x.reshape(-1, 3).astype(np.float64) / 255
    assert mean == pytest.approx(flat.mean(0).tolist()) and std == pytest.approx(flat.std(0).tolist())
    assert load_dataset(synthetic_root).mean == data.mean  # through the cache too


def test_make_split_n_max_too_large():
    y = np.repeat(np.arange(3), 100)
    with pytest.raises(ValueError, match="n_max"):
        make_split(y, "long_tail", 0.1, n_max=91, val_per_class=10)
    make_split(y, "long_tail", 0.1, n_max=90, val_per_class=10)  # exactly what is there


@pytest.mark.parametrize("kwargs, name", [
    (dict(imbalance_type="step"), "imbalance_type"),
    (dict(imb_factor=0.0), "imb_factor"),
    (dict(imb_factor=1.5), "imb_factor"),
    (dict(val_per_class=-1), "val_per_class"),
    (dict(val_per_class=100), "val_per_class"),
    (dict(imb_factor=0.001), "imb_factor"),  # leaves the last class empty
])
def test_make_split_bad_input(kwargs, name):
    args = dict(imbalance_type="long_tail", imb_factor=0.1, n_max=None, val_per_class=10)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        make_split(np.repeat(np.arange(3), 100), args.pop("imbalance_type"), args.pop("imb_factor"), **args)


# ----------------------------------------------------------------------------------------------
# Sources and cache

def test_image_folder_any_c(tmp_path):
    root = make_image_folder(tmp_path / "three", classes=("x", "b", "m"), n_train=4, n_test=2, seed=3)
    data = load_dataset(root, download=False)
    assert data.classes == ["b", "m", "x"]  # sorted folder names
    assert data.train_x.shape == (12, 32, 32, 3) and data.train_x.dtype == np.uint8
    assert data.test_x.shape == (6, 32, 32, 3)
    assert data.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    # pixels are the PNG's, exactly
    assert np.array_equal(data.train_x[5], np.asarray(Image.open(root / "train" / "m" / "0001.png")))
    assert np.array_equal(data.test_x[4], np.asarray(Image.open(root / "test" / "x" / "0000.png")))


def test_train_and_test_images_are_distinct(synthetic_root):
    data = load_dataset(synthetic_root, download=False)
    digest = lambda x: {hashlib.sha1(im.tobytes()).hexdigest() for im in x}
    train, test = digest(data.train_x), digest(data.test_x)
    assert len(train) == len(data.train_x) and len(test) == len(data.test_x)
    assert not train & test


def test_cifar_batches_source(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows[name], "labels": [0, 1, 2]}, f)
    data = load_dataset(tmp_path, download=False)  # the parent of the batches folder works too
    assert data.train_x.shape == (15, 32, 32, 3) and data.test_x.shape == (3, 32, 32, 3)
    assert data.num_classes == 10 and data.classes[0] == "airplane"
    # a row is 1024 red, then 1024 green, then 1024 blue values, row-major
    r = rows["data_batch_2"][1]
    assert np.array_equal(data.train_x[4, :, :, 0], r[:1024].reshape(32, 32))
    assert np.array_equal(data.train_x[4, :, :, 2], r[2048:].reshape(32, 32))
    assert data.train_y.tolist() == [0, 1, 2] * 5


def test_cifar100_folder_source(tmp_path):
    folder = make_cifar100_folder(tmp_path, n_train=4, n_test=2)
    data = load_dataset(tmp_path, dataset="cifar100")  # the parent of cifar-100-python works too
    assert data.num_classes == 100 and data.classes[:2] == ["fine_0", "fine_1"]
    assert data.train_x.shape == (400, 32, 32, 3) and data.test_x.shape == (200, 32, 32, 3)
    assert np.bincount(data.train_y).tolist() == [4] * 100  # the fine labels, not the 20 coarse ones
    with open(folder / "train", "rb") as f:
        row = pickle.load(f)["data"][37]
    assert np.array_equal(data.train_x[37, :, :, 1], row[1024:2048].reshape(32, 32))
    assert load_dataset(folder, dataset="cifar100").train_y.tolist() == data.train_y.tolist()
    with pytest.raises(DataError, match="holds CIFAR-100 .*--dataset cifar100"):
        load_dataset(tmp_path)  # the CIFAR-10 default is not silently given 100 classes


def test_cifar100_downloads_only_when_asked(tmp_path, monkeypatch):
    import torchvision

    calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", lambda root, **kw: calls.append(("100", root)) or 1 / 0)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", lambda root, **kw: calls.append(("10", root)) or 1 / 0)
    with pytest.raises(DataError, match="CIFAR100_ROOT.*cifar-100-python.*--download"):
        load_dataset(tmp_path / "c100", dataset="cifar100")
    assert calls == [] and not (tmp_path / "c100").exists()
    with pytest.raises(DataError, match="downloading CIFAR-100 failed"):
        load_dataset(tmp_path / "c100", download=True, dataset="cifar100")
    assert calls == [("100", str(tmp_path / "c100"))]
    monkeypatch.setenv("CIFAR100_ROOT", str(tmp_path / "mine"))
    assert data_loader.default_data_root("cifar100") == tmp_path / "mine"
    monkeypatch.delenv("CIFAR100_ROOT")
    assert data_loader.default_data_root("cifar100") == data_loader.DATA_DIR / "cifar100"
    with pytest.raises(ValueError, match="dataset='cifar1000'; valid: cifar10, cifar100"):
        load_dataset(tmp_path, dataset="cifar1000")


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "small", classes=("a", "b"), n_train=3, n_test=2)
    first = load_dataset(root, download=False)

    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(data_loader, "_decode", no_decode)
        second = load_dataset(root, download=False)
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(first, k), getattr(second, k))
    assert second.classes == first.classes
    # a new image changes the fingerprint: the data is read again
    Image.fromarray(first.train_x[0]).save(root / "train" / "b" / "extra.png")
    third = load_dataset(root, download=False)
    assert len(third.train_x) == 7 and third.train_y.tolist() == [0, 0, 0, 1, 1, 1, 1]


@pytest.fixture
def downloads(monkeypatch) -> list:
    """torchvision's CIFAR-10 download, replaced: it records where it was asked to download and
    fails as it does offline."""
    import torchvision

    calls = []

    def offline(root, train=True, download=False, **kw):
        calls.append(root)
        Path(root).mkdir(parents=True, exist_ok=True)  # as torchvision does before fetching
        raise RuntimeError("Error downloading cifar-10-python.tar.gz: no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    return calls


def test_a_mistyped_data_root_is_never_created_nor_downloaded_into(tmp_path, downloads):
    typo = tmp_path / "cifra10"
    with pytest.raises(DataError) as e:
        load_dataset(typo)
    assert not typo.exists() and downloads == []
    msg = str(e.value)
    assert "--download" in msg and "--data-root" in msg and "cifar-10-batches-py" in msg
    assert "shared" not in msg  # no path that exists only on the project's machines


def test_download_only_when_asked_or_into_the_default_folder(tmp_path, downloads, monkeypatch):
    target = tmp_path / "new"
    with pytest.raises(DataError, match="downloading CIFAR-10 failed") as e:
        load_dataset(target, download=True)
    assert downloads == [str(target)] and "shared" not in str(e.value)
    assert not target.exists()  # the folder the failed download created is gone
    default = tmp_path / "project" / "data" / "cifar10"
    monkeypatch.setattr(data_loader, "DATA_DIR", default.parent)
    monkeypatch.delenv("CIFAR10_ROOT", raising=False)
    with pytest.raises(DataError, match="downloading CIFAR-10 failed"):
        load_dataset()  # the project's own data folder: no flag needed
    assert downloads == [str(target), str(default)]
    with pytest.raises(DataError, match="no dataset at"):
        load_dataset(download=False)  # ... unless told never to
    assert downloads == [str(target), str(default)]


def test_real_data_second_load_hits_cache(real_root, monkeypatch):
    first = load_dataset(real_root, download=False)  # decodes only if the cache is missing
    assert first.train_x.shape == (50000, 32, 32, 3) and first.test_x.shape == (10000, 32, 32, 3)
    assert np.bincount(first.train_y).tolist() == [5000] * 10
    assert np.bincount(first.test_y).tolist() == [1000] * 10

    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data_loader, "_decode", no_decode)
    monkeypatch.setattr(data_loader, "_read_batches", no_decode)
    t0 = time.perf_counter()
    second = load_dataset(real_root, download=False)
    seconds = time.perf_counter() - t0
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(first, k), getattr(second, k)), k
    assert second.classes == first.classes
    assert seconds < 15  # about a second here (more on a busy machine); a decode takes minutes


# ----------------------------------------------------------------------------------------------
# Bad data: a DataError naming the file, the folder or the data_root at fault

def _tiny_folder(root: Path, classes=("ant", "bee"), n_train=3, n_test=2) -> Path:
    return make_image_folder(root, classes=classes, n_train=n_train, n_test=n_test)


def _bomb_png() -> bytes:
    """A valid PNG header claiming 40000x40000 pixels: Pillow refuses it as a decompression bomb."""
    import struct
    import zlib

    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def _save_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


CORRUPTIONS = {
    "empty file": lambda p: p.write_bytes(b""),
    "not an image": lambda p: p.write_text("hello"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:60]),
    "decompression bomb": lambda p: p.write_bytes(_bomb_png()),
    "directory": lambda p: (p.unlink(), p.mkdir()),
    "dangling symlink": lambda p: (p.unlink(), p.symlink_to(p.parent / "missing.png")),
    "other size": lambda p: _save_png(p, np.zeros((16, 16, 3), np.uint8)),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize("split", ["train", "test"])
def test_corrupt_image_is_a_data_error_naming_the_file(tmp_path, how, split):
    root = _tiny_folder(tmp_path / "data")
    bad = root / split / "bee" / "0001.png"
    CORRUPTIONS[how](bad)
    with pytest.raises(DataError, match=str(bad)):
        load_dataset(root, download=False)


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_randomly_damaged_png_loads_or_is_a_data_error_naming_it(tmp_path_factory, data):
    root = _tiny_folder(tmp_path_factory.mktemp("damaged"), n_train=2, n_test=1)
    bad = root / "train" / "ant" / "0000.png"
    raw = bytearray(bad.read_bytes())
    for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=8), label="positions"):
        raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)), label="length")
    bad.write_bytes(bytes(raw[:cut]))
    try:
        loaded = load_dataset(root, download=False)
    except DataError as e:
        assert str(bad) in str(e)
    else:
        assert loaded.train_x.shape == (4, 32, 32, 3)


@pytest.mark.parametrize("split", ["train", "test"])
def test_empty_class_folder(tmp_path, split):
    root = _tiny_folder(tmp_path / "data", classes=("ant", "bee", "cow"))
    for f in (root / split / "cow").iterdir():
        f.unlink()
    (root / split / "cow" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=rf"{root / split / 'cow'} holds no image"):
        load_dataset(root, download=False)


def test_mismatched_train_and_test_classes(tmp_path):
    root = _tiny_folder(tmp_path / "data")
    (root / "test" / "bee").rename(root / "test" / "bea")
    with pytest.raises(DataError, match=r"only in train \['bee'\], only in test \['bea'\]"):
        load_dataset(root, download=False)


def test_a_single_class_is_not_a_dataset(tmp_path):
    root = _tiny_folder(tmp_path / "data", classes=("ant",))
    with pytest.raises(DataError, match="need >= 2"):
        load_dataset(root, download=False)


@pytest.mark.parametrize("layout", ["junk file", "train only", "empty, no download", "missing, no download"])
def test_data_root_without_a_dataset(tmp_path, downloads, layout):
    """The error names data_root and says how to point the loader at local data, and where
    downloading is off, that --download fetches it; a folder holding something else is never
    downloaded into."""
    root = tmp_path / "data"
    if not layout.startswith("missing"):
        root.mkdir()
    if layout == "junk file":
        (root / "notes.txt").write_text("not a dataset")
    elif layout == "train only":
        (root / "train" / "ant").mkdir(parents=True)
    no_download = layout.endswith("no download")
    with pytest.raises(DataError, match="data_root=") as e:
        load_dataset(root, download=not no_download)
    assert "train/<class>" in str(e.value) and downloads == []
    if no_download:
        assert "--download" in str(e.value)


# ----------------------------------------------------------------------------------------------
# Batches on the device

def _images(n=12, h=6, w=5, seed=0):
    """Distinct small uint8 NCHW images, pixel values in 1..255 so zero padding is recognisable."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _identity_norm():
    return Normalizer([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], "cpu")


def test_normalizer_matches_formula():
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    x = _images(4, 8, 8)
    got = Normalizer(mean, std, "cpu")(x)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (x.float() / 255 - m) / s, rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32


def test_channel_stats():
    # four pixels; red (1, 0, 0, 1), green (1, 0, 0, 0), blue (0.2, 0, 0, 0.2) in [0, 1] units
    x = np.zeros((2, 1, 2, 3), np.uint8)
    x[0, 0, 0] = (255, 255, 51)
    x[1, 0, 1] = (255, 0, 51)
    mean, std = data_loader.channel_stats(x)
    assert mean == pytest.approx([0.5, 0.25, 0.1])
    assert std == pytest.approx([0.5, np.sqrt(0.25 * 0.75), 0.1])


@pytest.mark.parametrize("batch_size", [4, 5, 64])
def test_one_epoch_visits_every_index_once(batch_size):
    n = 13
    labels = torch.arange(n)  # the label is the index, so the batches tell which images they hold
    b = DeviceBatches(_images(n), labels, batch_size, _identity_norm(), torch.Generator().manual_seed(0))
    assert len(b) == -(-n // batch_size)
    for _ in range(2):
        seen = torch.cat([yb for _, yb in b])
        assert sorted(seen.tolist()) == list(range(n))
    sizes = [len(yb) for _, yb in b]
    assert sum(sizes) == n and all(s == batch_size for s in sizes[:-1])


def _reference_epoch(x: np.ndarray, gen_state, pad: int):
    """The augmented epoch by hand: the draws in DeviceBatches' documented order (permutation, row
    offsets, column offsets, flips), then zero pad, crop at the offset and flip with numpy."""
    g = torch.Generator()
    g.set_state(gen_state)
    n, _, h, w = x.shape
    order = torch.randperm(n, generator=g).numpy()
    dy = torch.randint(2 * pad + 1, (n,), generator=g).numpy()
    dx = torch.randint(2 * pad + 1, (n,), generator=g).numpy()
    flip = (torch.rand(n, generator=g) < 0.5).numpy()
    out = []
    for k, i in enumerate(order):
        padded = np.zeros((3, h + 2 * pad, w + 2 * pad), np.uint8)
        padded[:, pad:pad + h, pad:pad + w] = x[i]
        crop = padded[:, dy[k]:dy[k] + h, dx[k]:dx[k] + w]
        out.append(crop[:, :, ::-1] if flip[k] else crop)
    return order, np.stack(out), dy, dx, flip


def test_crop_and_flip_match_numpy_reference():
    x = _images(16, 32, 32, seed=1)  # CIFAR-sized
    gen = torch.Generator().manual_seed(123)
    norm = Normalizer([0.4, 0.5, 0.6], [0.2, 0.25, 0.3], "cpu")
    b = DeviceBatches(x, torch.arange(16), 5, norm, gen, pad=4)
    for _ in range(2):  # two epochs: the second continues the generator's stream
        order, ref, dy, dx, flip = _reference_epoch(x.numpy(), gen.get_state(), pad=4)
        xs, ys = zip(*b)
        assert torch.cat(ys).tolist() == order.tolist()
        assert torch.equal(torch.cat(xs), norm(torch.from_numpy(ref)))
    # the draws exercised the interesting cases: offsets off-centre both ways, and both flips
    assert dy.min() < 4 < dy.max() and dx.min() < 4 < dx.max() and 0 < flip.sum() < 16
    assert set(np.unique(dy)) <= set(range(9))


def test_crop_shows_zero_padding():
    """The crop's top-left pixel is padding (zero) exactly when it falls outside the image: row
    offset < pad, or column offset < pad unflipped, or > pad flipped (the mirrored edge)."""
    x = _images(64, 8, 8, seed=2)  # pixel values >= 1, so only padding is zero
    gen = torch.Generator().manual_seed(0)
    b = DeviceBatches(x, torch.arange(64), 64, _identity_norm(), gen, pad=4)
    _, _, dy, dx, flip = _reference_epoch(x.numpy(), gen.get_state(), pad=4)
    (xb, _), = list(b)
    zero = (xb[:, :, 0, 0] == 0).all(1).numpy()
    assert zero.tolist() == ((dy < 4) | ((dx < 4) & ~flip) | ((dx > 4) & flip)).tolist()
    assert 0 < zero.sum() < 64


def test_no_augment_returns_images_in_order():
    x = _images(10, 4, 4)
    gen = torch.Generator().manual_seed(0)
    b = DeviceBatches(x, torch.arange(10), 3, _identity_norm(), gen, augment=False)
    g = torch.Generator()
    g.set_state(gen.get_state())
    order = torch.randperm(10, generator=g)
    xs, ys = zip(*b)
    assert torch.cat(ys).tolist() == order.tolist()
    assert torch.equal(torch.cat(xs), _identity_norm()(x[order]))
    torch.testing.assert_close(torch.cat(xs), x[order].float() / 255)


def test_same_seed_same_batches():
    x = _images(20, 6, 6)
    make = lambda seed: list(DeviceBatches(x, torch.arange(20), 8, _identity_norm(),
                                           torch.Generator().manual_seed(seed)))
    a, b, c = make(5), make(5), make(6)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_state_dict_replays_the_stream():
    x = _images(20, 6, 6)
    b = DeviceBatches(x, torch.arange(20), 8, _identity_norm(), torch.Generator().manual_seed(1))
    state = b.state_dict()
    first = [xb for xb, _ in b]
    b.load_state_dict(state)
    again = [xb for xb, _ in b]
    assert all(torch.equal(p, q) for p, q in zip(first, again))


def test_state_dict_loads_from_a_snapshot_on_the_gpu():
    """A CUDA run loads its snapshots onto the GPU (map_location), generator state included; the
    CPU generator takes its state back from there (first seen on an H200: "RNG state must be a
    torch.ByteTensor"). Here a stand-in tensor plays the GPU copy: only its .cpu() is a ByteTensor."""
    class OnGpu:
        def __init__(self, t):
            self.t = t

        def cpu(self):
            return self.t

    x = _images(20, 6, 6)
    b = DeviceBatches(x, torch.arange(20), 8, _identity_norm(), torch.Generator().manual_seed(1))
    state = b.state_dict()
    first = [xb for xb, _ in b]
    b.load_state_dict({"generator": OnGpu(state["generator"])})
    assert all(torch.equal(p, q) for p, q in zip(first, [xb for xb, _ in b]))


def test_class_balanced_sampler_draws_classes_evenly():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    b = DeviceBatches(_images(100, 4, 4), y, 100, _identity_norm(), torch.Generator().manual_seed(0),
                      augment=False, sampler="class_balanced")
    drawn = torch.cat([torch.cat([yb for _, yb in b]) for _ in range(30)])
    frac = torch.bincount(drawn, minlength=3).float() / len(drawn)
    torch.testing.assert_close(frac, torch.full((3,), 1 / 3), atol=0.03, rtol=0)


def test_to_device_images_layout():
    x = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    t = data_loader.to_device_images(x, "cpu")
    assert t.shape == (2, 3, 4, 5) and t.dtype == torch.uint8
    assert np.array_equal(t.numpy(), x.transpose(0, 3, 1, 2))


def test_recompress_jpeg_loses_more_the_lower_the_quality(synthetic_root):
    x = load_dataset(synthetic_root).train_x[:32]
    error = {q: np.abs(data_loader.recompress_jpeg(x, q).astype(int) - x).mean() for q in (95, 50, 10)}
    assert 0 < error[95] < error[50] < error[10]
    again = data_loader.recompress_jpeg(x, 50)
    assert again.dtype == np.uint8 and again.shape == x.shape
    assert np.array_equal(again, data_loader.recompress_jpeg(x, 50))  # deterministic
