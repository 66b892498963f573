"""Image data: find it, decode it once, draw the imbalanced subsets, and feed batches from the device.

Sources (``load_dataset(data_root, download, dataset)``), tried in this order:

1. torchvision's extracted download of the ``dataset`` (:data:`DATASETS`): a ``cifar-10-batches-py``
   folder for ``cifar10``, a ``cifar-100-python`` one (files ``train``, ``test``, ``meta``; the
   100 ``fine_labels``) for ``cifar100``; ``data_root`` itself, or a child of it;
2. an image-folder root with ``train/<class>/*`` and ``test/<class>/*`` (any C >= 2 classes);
3. torchvision's download of the dataset into ``data_root``, when it is empty or missing, we are
   online, and ``download=True`` or ``data_root`` is this project's ``data/<dataset>``.

The decoded images are cached as uint8 arrays (``.npy``) so that a second load costs about a second.

Imbalance (``make_split``): two balanced splits are drawn first from the training images, per class
``val_per_class`` for validation (selection: best epoch, settings, tau) and then ``stat_per_class``
for the statistic of dynamic reweighting (``val_loss``/``val_error`` modes), so that nothing that
selects is also trained on. The imbalanced training subset is drawn from what remains:

* ``long_tail``: ``n_i = int(n_max * imb_factor ** (i / (C - 1)))`` (Cao et al. 2019);
* ``head_tail``: the first ``C - C // 2`` classes keep ``n_max``, the last ``C // 2`` keep
  ``int(n_max * imb_factor)``.

Normalisation constants (``channel_stats``) come from the dataset's whole balanced training split,
once per dataset: they do not change with the scenario, the seed or the subset.

Training batches (``DeviceBatches``) come from one uint8 tensor on the run's device: random crop
(zero pad 4) and horizontal flip are a single batched gather, followed by normalisation.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMBALANCE_TYPES = ("long_tail", "head_tail")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
DATA_DIR = Path(__file__).resolve().parent / "data"  # the default data root of a dataset is DATA_DIR/<name>
DEFAULT_DATASET = "cifar10"  # a key of DATASETS
CACHE_VERSION = 2  # 2: the cache records the normalisation constants


class DataError(ValueError):
    """The data at hand cannot be used; the message says why and what to do."""


@dataclass
class ImageData:
    """A whole dataset in memory: uint8 images in NHWC layout and int64 labels."""
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list
    source: str  # where it was read from, for the run's config
    mean: list | None = None  # per-channel normalisation constants over all of train_x, in [0, 1]
    std: list | None = None   # units; computed once per dataset (and cached) when not given

    def __post_init__(self):
        if self.mean is None or self.std is None:
            self.mean, self.std = channel_stats(self.train_x)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------------------------
# Finding and decoding the data

def default_data_root(dataset: str = DEFAULT_DATASET) -> Path:
    """``$CIFAR10_ROOT`` (``$CIFAR100_ROOT``, ...) if set, else ``data/<dataset>`` beside this file."""
    return Path(os.environ.get(_source(dataset).env) or DATA_DIR / dataset)


def _find_download_dir(root: Path, source: "CifarSource") -> Path | None:
    for cand in (root, root / source.folder):
        if all((cand / name).is_file() for name in source.files):
            return cand
    return None


def _is_image_folder(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _unpickle_images(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (NHWC uint8) and labels of one of torchvision's CIFAR pickles: rows of 1024 red, then
    1024 green, then 1024 blue values."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return d["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[label_key], dtype=np.int64)


def _read_meta(path: Path, key: str, default: list) -> list:
    if not path.is_file():
        return list(default)
    with open(path, "rb") as f:
        return list(pickle.load(f, encoding="latin1")[key])


def _read_batches(folder: Path) -> ImageData:
    """CIFAR-10: ``data_batch_1`` ... ``data_batch_5``, ``test_batch``, ``batches.meta``."""
    parts = [_unpickle_images(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
    test_x, test_y = _unpickle_images(folder / "test_batch", "labels")
    classes = _read_meta(folder / "batches.meta", "label_names", CIFAR10_CLASSES)
    return ImageData(np.ascontiguousarray(np.concatenate([p[0] for p in parts])),
                     np.concatenate([p[1] for p in parts]), np.ascontiguousarray(test_x), test_y, classes,
                     str(folder))


def _read_cifar100(folder: Path) -> ImageData:
    """CIFAR-100: ``train``, ``test`` and ``meta``; the labels are the 100 ``fine_labels``."""
    train_x, train_y = _unpickle_images(folder / "train", "fine_labels")
    test_x, test_y = _unpickle_images(folder / "test", "fine_labels")
    classes = _read_meta(folder / "meta", "fine_label_names", [str(c) for c in range(100)])
    return ImageData(np.ascontiguousarray(train_x), train_y, np.ascontiguousarray(test_x), test_y, classes,
                     str(folder))


@dataclass(frozen=True)
class CifarSource:
    """A dataset that torchvision downloads: its extracted folder, the files that must be there,
    how to read them, its downloader and the environment variable of its default data root."""
    title: str
    folder: str
    files: tuple
    reader: Callable[[Path], ImageData]
    downloader: str  # a class of torchvision.datasets
    env: str
    size: str


DATASETS = {
    "cifar10": CifarSource("CIFAR-10", "cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
                           _read_batches, "CIFAR10", "CIFAR10_ROOT", "170 MB"),
    "cifar100": CifarSource("CIFAR-100", "cifar-100-python", ("train", "test"), _read_cifar100, "CIFAR100",
                            "CIFAR100_ROOT", "170 MB"),
}


def _source(dataset: str) -> CifarSource:
    if not (isinstance(dataset, str) and dataset in DATASETS):
        raise ValueError(f"dataset={dataset!r}; valid: {', '.join(DATASETS)}")
    return DATASETS[dataset]


def _list_split(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    files = [sorted(f for f in (split_dir / c).iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
             for c in classes]
    return classes, files


def _decode(paths: list[Path], size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out = None
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"cannot read image file {p}: {e}") from e
        if out is None:
            size = size or arr.shape[:2]
            out = np.empty((len(paths), *size, 3), dtype=np.uint8)
        if arr.shape[:2] != tuple(size):
            raise DataError(f"image {p} is {arr.shape[1]}x{arr.shape[0]}, expected "
                            f"{size[1]}x{size[0]} like the others; resize the dataset first")
        out[i] = arr
    return out


def recompress_jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    """Each image of ``x`` (N, H, W, 3 uint8) encoded as JPEG at ``quality`` and decoded again, with
    Pillow's defaults otherwise (4:2:0 chroma subsampling): a stored copy as lossy as that quality."""
    from PIL import Image

    out = np.empty_like(x)
    for i, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def _read_image_folder(root: Path) -> ImageData:
    train_classes, train_files = _list_split(root / "train")
    test_classes, test_files = _list_split(root / "test")
    if len(train_classes) < 2:
        raise DataError(f"{root / 'train'} has {len(train_classes)} class folder(s); need >= 2")
    if train_classes != test_classes:
        raise DataError(f"class folders differ between {root / 'train'} and {root / 'test'}: "
                        f"only in train {sorted(set(train_classes) - set(test_classes))}, "
                        f"only in test {sorted(set(test_classes) - set(train_classes))}")
    for split, classes, files in (("train", train_classes, train_files),
                                  ("test", test_classes, test_files)):
        for c, fs in zip(classes, files):
            if not fs:
                raise DataError(f"class folder {root / split / c} holds no image "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    flat_train = [f for fs in train_files for f in fs]
    train_x = _decode(flat_train, None)
    test_x = _decode([f for fs in test_files for f in fs], train_x.shape[1:3])
    label = lambda files: np.concatenate([np.full(len(fs), i, np.int64) for i, fs in enumerate(files)])
    return ImageData(train_x, label(train_files), test_x, label(test_files), train_classes, str(root))


def _cache_path(root: Path, kind: str) -> Path:
    """Cache beside the data when that folder is writable, else in the user's cache folder."""
    key = hashlib.sha1(f"{root.resolve()}|{kind}|{CACHE_VERSION}".encode()).hexdigest()[:12]
    if os.access(root, os.W_OK):
        return root / f".uint8_cache_{key}"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ictta"
    return base / f"uint8_cache_{key}"


def _fingerprint(root: Path, kind: str) -> dict:
    """Cheap identity of the source: file counts and newest mtime of its files."""
    if kind in DATASETS:
        files = [root / name for name in DATASETS[kind].files]
    else:
        files = [f for split in ("train", "test") for f in (root / split).rglob("*") if f.is_file()]
    return {"n_files": len(files), "mtime": max((f.stat().st_mtime for f in files), default=0.0)}


def _load_cached(root: Path, kind: str, reader, write: bool = True) -> ImageData:
    cache = _cache_path(root, kind)
    fp = _fingerprint(root, kind)
    meta_file = cache / "meta.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("fingerprint") == fp:
            arrays = {k: np.load(cache / f"{k}.npy") for k in ("train_x", "train_y", "test_x", "test_y")}
            return ImageData(**arrays, classes=meta["classes"], source=meta["source"],
                             mean=meta["mean"], std=meta["std"])
    data = reader(root)
    if not write:
        return data
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for k in ("train_x", "train_y", "test_x", "test_y"):
            tmp = cache / f"{k}.tmp{os.getpid()}.npy"
            np.save(tmp, getattr(data, k))
            os.replace(tmp, cache / f"{k}.npy")
        meta = {"fingerprint": fp, "classes": list(data.classes), "source": data.source,
                "mean": data.mean, "std": data.std}
        tmp = cache / f"meta.tmp{os.getpid()}.json"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_file)  # written last: the cache counts only once it is complete
    except OSError:
        pass  # an unwritable cache costs speed, not correctness
    return data


def load_dataset(data_root: str | os.PathLike | None = None, download: bool | None = None,
                 dataset: str = DEFAULT_DATASET) -> ImageData:
    """Load a whole dataset as uint8 arrays, decoding it only the first time.

    ``data_root`` defaults to :func:`default_data_root` of ``dataset``. When it holds nothing, the
    dataset is downloaded there (170 MB) if ``download`` is True, or, when it is None, only into this
    project's own data folder (``data/<dataset>``): a mistyped path is an error, never a download or
    a new folder; ``download=False`` never downloads.
    Raises :class:`DataError` (a ``ValueError``) when the folder holds no recognisable dataset, or
    holds nothing and may not or cannot be downloaded into.
    """
    source = _source(dataset)
    root = Path(data_root) if data_root is not None else default_data_root(dataset)
    data = find_dataset(root, dataset)
    if data is not None:
        return data
    own_folder = root.resolve() == (DATA_DIR / dataset).resolve()
    if not (download if download is not None else own_folder):
        raise DataError(f"no dataset at data_root={str(root)!r}: {_hint(source)}; or add --download "
                        f"(download=True) to fetch {source.title} ({source.size}) there")
    return _download(root, dataset)


def _hint(source: CifarSource) -> str:
    return (f"point data_root (--data-root, or ${source.env}) at a '{source.folder}' folder or at an "
            f"image-folder root holding train/<class>/ and test/<class>/")


def find_dataset(data_root: str | os.PathLike | None = None, dataset: str = DEFAULT_DATASET,
                 write_cache: bool = True) -> ImageData | None:
    """The dataset in ``data_root`` (default :func:`default_data_root`), or None when the folder is
    missing or empty; never downloads, and with ``write_cache=False`` writes nothing at all. Raises
    :class:`DataError` when it holds something else, such as another dataset than ``dataset``."""
    source = _source(dataset)
    root = Path(data_root) if data_root is not None else default_data_root(dataset)
    if root.is_file() and tarfile.is_tarfile(root):
        raise DataError(f"data_root={str(root)!r} is an archive; extract it first, e.g. "
                        f"`mkdir -p data/{dataset} && tar -xzf {root} -C data/{dataset}`")
    for name, other in DATASETS.items():
        folder = _find_download_dir(root, other) if root.is_dir() else None
        if folder is not None and other is not source:
            raise DataError(f"data_root={str(root)!r} holds {other.title} ({other.folder}), not {source.title}: "
                            f"give --dataset {name} (dataset={name!r}), or another data_root")
        if folder is not None:
            return _load_cached(folder, name, source.reader, write_cache)
    if root.is_dir() and _is_image_folder(root):
        return _load_cached(root, "folder", _read_image_folder, write_cache)
    if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError(f"data_root={str(root)!r} holds no recognisable dataset: {_hint(source)}")
    return None


def _download(root: Path, dataset: str) -> ImageData:
    """torchvision's download of ``dataset`` into ``root``; a folder it created is removed if it fails."""
    import torchvision

    source, created = DATASETS[dataset], not root.exists()
    print(f"downloading {source.title} ({source.size}) into {root}", file=sys.stderr, flush=True)
    try:
        getattr(torchvision.datasets, source.downloader)(str(root), train=True, download=True)
    except Exception as e:  # offline, or the mirror is down: the user needs the same advice
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise DataError(f"no dataset at data_root={str(root)!r}, and downloading {source.title} failed "
                        f"({type(e).__name__}: {e}); {_hint(source)}") from e
    return _load_cached(_find_download_dir(root, source), dataset, source.reader)


# ----------------------------------------------------------------------------------------------
# Imbalanced subsets

def class_counts(imbalance_type: str, imb_factor: float, n_max: int, num_classes: int) -> list[int]:
    """Per-class training counts of a scenario (see the module docstring for the formulas)."""
    if imbalance_type not in IMBALANCE_TYPES:
        raise ValueError(f"imbalance_type={imbalance_type!r}; valid: {', '.join(IMBALANCE_TYPES)}")
    if not 0 < imb_factor <= 1:
        raise ValueError(f"imb_factor={imb_factor!r} must lie in (0, 1]")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r}; need >= 2")
    C = num_classes
    if imbalance_type == "long_tail":
        counts = [int(n_max * imb_factor ** (i / (C - 1))) for i in range(C)]
    else:
        n_head = C - C // 2
        counts = [n_max] * n_head + [int(n_max * imb_factor)] * (C - n_head)
    if min(counts) < 1:
        raise ValueError(f"imb_factor={imb_factor} with n_max={n_max} leaves a class with no "
                         f"image (counts {counts}); raise imb_factor or n_max")
    return counts


@dataclass
class Split:
    """Indices into ``ImageData.train_x``: the imbalanced training subset, the balanced validation
    split and the balanced statistic split, pairwise disjoint. ``counts[c]`` is class c's
    training count."""
    train_idx: np.ndarray
    val_idx: np.ndarray
    counts: list
    stat_idx: np.ndarray = None

    def __post_init__(self):
        if self.stat_idx is None:
            self.stat_idx = np.empty(0, dtype=np.int64)


def make_split(train_y: np.ndarray, imbalance_type: str, imb_factor: float, *, n_max: int | None = None,
               val_per_class: int = 100, stat_per_class: int = 0, seed: int = 0) -> Split:
    """Draw the validation split, the statistic split, then the imbalanced training subset,
    reproducibly from ``seed``: per class, one permutation gives the first ``val_per_class`` images
    to validation, the next ``stat_per_class`` to the statistic split and the next ``counts[c]`` to
    training.

    ``n_max`` defaults to the smallest per-class count left after the two balanced splits
    (4850 on CIFAR-10 with 100 + 50, 5000 with 0 + 0).
    """
    train_y = np.asarray(train_y)
    C = int(train_y.max()) + 1
    available = np.bincount(train_y, minlength=C)
    for name, v in (("val_per_class", val_per_class), ("stat_per_class", stat_per_class)):
        if v < 0:
            raise ValueError(f"{name}={v!r} must be >= 0")
    held = val_per_class + stat_per_class
    if available.min() <= held:
        raise ValueError(f"val_per_class={val_per_class} + stat_per_class={stat_per_class} leave no "
                         f"training image in the smallest class ({available.min()} images)")
    room = int(available.min()) - held
    if n_max is None:
        n_max = room
    if not isinstance(n_max, (int, np.integer)) or n_max < 1 or n_max > room:
        raise ValueError(f"n_max={n_max!r}: the data has at most {room} images per class after "
                         f"holding out val_per_class={val_per_class} and stat_per_class={stat_per_class}")
    counts = class_counts(imbalance_type, imb_factor, int(n_max), C)
    rng = np.random.default_rng(seed)
    train_idx, val_idx, stat_idx = [], [], []
    for c in range(C):
        idx = rng.permutation(np.flatnonzero(train_y == c))
        val_idx.append(idx[:val_per_class])
        stat_idx.append(idx[val_per_class:held])
        train_idx.append(idx[held:held + counts[c]])
    return Split(*(np.sort(np.concatenate(part)) for part in (train_idx, val_idx)), counts,
                 np.sort(np.concatenate(stat_idx)))


# ----------------------------------------------------------------------------------------------
# Batches on the device

def channel_stats(x: np.ndarray) -> tuple[list, list]:
    """Per-channel mean and std of uint8 NHWC images, in [0, 1] units, exact (from each channel's
    histogram of the 256 values, so 50,000 images cost no float copy)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[-1]):
        hist = np.bincount(np.ascontiguousarray(x[..., c]).ravel(), minlength=256).astype(np.float64)
        p = hist / hist.sum()
        m = float(p @ values)
        mean.append(m)
        std.append(float(np.sqrt(p @ (values - m) ** 2)))
    return mean, std


class Normalizer:
    """uint8 NCHW -> normalised float: ``(x / 255 - mean) / std``, as one multiply-add."""

    def __init__(self, mean, std, device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x_uint8.float(), self.scale)


def to_device_images(x: np.ndarray, device) -> torch.Tensor:
    """NHWC uint8 numpy -> NCHW uint8 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)


class DeviceBatches:
    """Shuffled, augmented training batches drawn from one uint8 tensor on the device.

    The images are zero-padded by ``pad`` once, here. Each epoch draws, on a CPU generator (so the
    stream is the same on every device), a permutation, crop offsets in ``[0, 2*pad]`` and flips;
    each batch is then a single gather from the padded tensor: a random 32x32 crop of the padded
    image, mirrored where flipped, then normalised. This matches torchvision's
    ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` + ``Normalize`` up to the random draws.

    ``sampler="class_balanced"`` draws each epoch's indices so that every class is equally likely
    (Kang et al. 2020): a class uniformly, then an image of it uniformly.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, normalizer: Normalizer,
                 generator: torch.Generator, pad: int = 4, augment: bool = True,
                 sampler: str = "uniform", channels_last: bool = False):
        self.n, _, self.h, self.w = x.shape
        self.x = torch.nn.functional.pad(x, (pad, pad, pad, pad)) if augment and pad else x
        self.y = y
        self.pad = pad if augment else 0
        self.batch_size, self.normalizer, self.generator = batch_size, normalizer, generator
        self.augment, self.sampler, self.channels_last = augment, sampler, channels_last
        device = x.device
        self.rows = torch.arange(self.h, device=device)
        self.cols = torch.arange(self.w, device=device)
        self.chan = torch.arange(x.shape[1], device=device).view(1, -1, 1, 1)
        if sampler == "class_balanced":
            y_cpu = y.cpu()
            self.num_classes = int(y_cpu.max()) + 1
            self.class_members = [torch.nonzero(y_cpu == c).flatten() for c in range(self.num_classes)]

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def _epoch_order(self) -> torch.Tensor:
        g = self.generator
        if self.sampler == "uniform":
            return torch.randperm(self.n, generator=g)
        cls = torch.randint(self.num_classes, (self.n,), generator=g)
        pick = torch.rand(self.n, generator=g)
        sizes = torch.tensor([len(m) for m in self.class_members])
        offsets = torch.cumsum(sizes, 0) - sizes
        flat = torch.cat(self.class_members)
        return flat[offsets[cls] + (pick * sizes[cls]).long().clamp_max(sizes[cls] - 1)]

    def __iter__(self):
        g, device = self.generator, self.x.device
        order = self._epoch_order()
        if self.augment:
            dy = torch.randint(2 * self.pad + 1, (self.n,), generator=g)
            dx = torch.randint(2 * self.pad + 1, (self.n,), generator=g)
            flip = torch.rand(self.n, generator=g) < 0.5
            # one host->device copy per epoch, not per batch
            order, dy, dx, flip = (t.to(device, non_blocking=True) for t in (order, dy, dx, flip))
        else:
            order = order.to(device, non_blocking=True)
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            if self.augment:
                sl = slice(start, start + self.batch_size)
                r = (dy[sl, None] + self.rows).view(-1, 1, self.h, 1)
                c = dx[sl, None] + torch.where(flip[sl, None], self.w - 1 - self.cols, self.cols)
                xb = self.x[idx.view(-1, 1, 1, 1), self.chan, r, c.view(-1, 1, 1, self.w)]
            else:
                xb = self.x[idx]
            xb = self.normalizer(xb)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, self.y[idx]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())  # a CUDA run loads snapshots onto its GPU
