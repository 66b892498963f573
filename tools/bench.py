"""Benchmark: is the model the only cost of this project's training epoch?

One run measures, for one model, device and precision, over the CIFAR-10-LT subset of a run
(``long_tail``, ``imb_factor`` 0.01, ``val_per_class`` 100, batch 128):

* **(a) project**: a training epoch exactly as a run does it: uint8 images on the device,
  :class:`data_loader.DeviceBatches` (batched crop + flip + normalise), and
  :func:`train_eval.train_one_epoch` with stage 2's loss of ``two_stage_ictta`` (focal, gamma 1.5,
  class weights in [1, 8]), its learning-rate schedule and SGD step;
* **(b) model step**: forward, the same loss, backward and SGD step on random tensors already on
  the device, in the same precision and memory format: the compute limit of (a);
* **(c) reference**: the field's usual pipeline, as LDAM-DRW's code does it: a ``Dataset`` that
  turns each uint8 image into a PIL image (as torchvision's ``CIFAR10`` does), per-sample
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, a shuffling
  ``DataLoader`` and the model in fp32 (no channels_last, no autocast), with the same loss and
  optimizer. ``num_workers`` is the fastest of a short probe over ``--workers``.

It also times :func:`train_eval.evaluate` on the full test set, records peak memory and the load
average, prints a table and writes everything to a JSON file::

    python bench.py --device cpu                 # full epochs (minutes on a 2-core CPU)
    python bench.py --max-steps 20               # a quick check: 20 steps each, extrapolated

Timing: ``time.perf_counter``, with ``torch.cuda.synchronize`` before each reading on CUDA, after
untimed warm-up steps. Images/s and s/epoch come from wall time; ``median_step_s`` (CPU only) is a
second estimate that resists load spikes from other processes on a shared machine.
"""
from __future__ import annotations

import datetime
import os
import platform
import resource
import shlex
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules, from tools/
import data_loader
import losses
from cli import unwritable_file
from model import MODELS
from results_logger import cpu_model, git_commit, write_json
from train_eval import PRECISIONS, autocast, evaluate, resolve_device, train_one_epoch
from config import COMPILE_MODES, TwoStageConfig, check_setting, is_choice
from methods import build_loss, lr_at_step
from two_stage_ictta import build_model as run_model
from two_stage_ictta import prepare_data

HERE = Path(__file__).resolve().parent.parent  # the project


def opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class BenchConfig:
    """Every setting of one benchmark run."""
    model: str = opt("resnet32", f"model: {', '.join(MODELS)}")
    device: str = opt("auto", "auto (cuda if available), cpu, cuda or cuda:N")
    precision: str = opt("bf16", "bf16 (autocast) or fp32, for (a) and (b); (c) is always fp32")
    threads: int | None = opt(None, "torch.set_num_threads; None: torch's default, one per core")
    compile: bool = opt(False, "torch.compile the forward pass of (a) and (b)")
    compile_mode: str = opt("default", f"torch.compile mode: {', '.join(COMPILE_MODES)}")
    max_steps: int | None = opt(None, "time only N steps of each of a/b/c and extrapolate s/epoch "
                                      "from the per-step time; None: full epochs")
    warmup_steps: int = opt(5, "untimed steps before each measurement")
    out: str | None = opt(None, "JSON file (default: results/bench/bench_<device>_<model>.json; the committed "
                                "benchmarks/ files change only when named here)")
    data_root: str | None = opt(None, "dataset folder; None: $CIFAR10_ROOT, else data/cifar10")
    imbalance_type: str = opt("long_tail", "scenario: long_tail or head_tail")
    imb_factor: float = opt(0.01, "smallest / largest class count, in (0, 1]")
    val_per_class: int = opt(100, "validation images per class held out first, as in a run")
    stat_per_class: int = opt(50, "statistic-split images per class held out next, as in a run")
    batch_size: int = opt(128, "training images per step")
    seed: int = opt(0, "seed of the subset, the init and the batch order")
    channels_last: bool = opt(True, "channels-last memory format in (a) and (b), as a run's default")
    eval_batch_size: int = opt(512, "images per evaluation batch, as a run's default")
    workers: str = opt("0,1,2", "num_workers candidates for (c)'s DataLoader, comma-separated")
    probe_steps: int = opt(6, "timed steps per num_workers candidate in (c)'s probe")
    quiet: bool = opt(False, "print nothing")


def validate(cfg: BenchConfig) -> None:
    """Raise ``ValueError`` naming the first invalid setting."""
    def check(ok, name, accepted):
        check_setting(ok, name, getattr(cfg, name), accepted)
    check(isinstance(cfg.model, str) and cfg.model.lower() in MODELS, "model", ", ".join(MODELS))
    check(is_choice(cfg.precision, PRECISIONS), "precision", ", ".join(PRECISIONS))
    check(is_choice(cfg.compile_mode, COMPILE_MODES), "compile_mode", ", ".join(COMPILE_MODES))
    check(is_choice(cfg.imbalance_type, data_loader.IMBALANCE_TYPES), "imbalance_type",
          ", ".join(data_loader.IMBALANCE_TYPES))
    check(cfg.threads is None or cfg.threads >= 1, "threads", "None or an integer >= 1")
    check(cfg.max_steps is None or cfg.max_steps >= 1, "max_steps", "None or an integer >= 1")
    check(cfg.warmup_steps >= 0, "warmup_steps", "an integer >= 0")
    check(cfg.seed >= 0, "seed", "an integer >= 0")
    why_not = cfg.out is not None and unwritable_file(cfg.out)  # checked now, not after the minutes of timing
    check(not why_not, "out", f"a JSON file path that can be written ({why_not})")
    for name in ("batch_size", "eval_batch_size", "probe_steps"):
        check(getattr(cfg, name) >= 1, name, "an integer >= 1")
    try:
        ok = len(worker_candidates(cfg)) > 0 and min(worker_candidates(cfg)) >= 0
    except ValueError:
        ok = False
    check(ok, "workers", "comma-separated integers >= 0, e.g. 0,1,2")
    resolve_device(cfg.device)


def worker_candidates(cfg: BenchConfig) -> list[int]:
    return [int(w) for w in str(cfg.workers).split(",") if w.strip()]


# ----------------------------------------------------------------------------------------------
# Clocks, memory, machine

def sync(device: torch.device) -> None:
    """Wait for the device's queued work: CUDA kernels run asynchronously, so a clock read without
    this measures only how fast they were queued. A no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Hands out at most ``max_steps`` batches of ``batches`` and notes the clock at each one, so a
    loop it feeds (``train_one_epoch``) can be timed per step without being changed."""

    def __init__(self, batches, max_steps: int | None = None):
        self.batches, self.max_steps = batches, max_steps
        self.stamps: list[float] = []

    def __iter__(self):
        self.stamps = []
        for i, batch in enumerate(self.batches):
            if self.max_steps is not None and i >= self.max_steps:
                return
            self.stamps.append(time.perf_counter())
            yield batch


def measurement(seconds: float, sizes: list[int], steps_per_epoch: int, epoch_images: int,
                stamps: list[float], t_end: float, device: torch.device) -> dict:
    """Images/s and s/epoch of ``len(sizes)`` timed steps; s/epoch is extrapolated from the mean
    step time when fewer than an epoch's steps were timed."""
    steps, images = len(sizes), int(sum(sizes))
    full = steps == steps_per_epoch and images == epoch_images
    out = {"steps": steps, "images": images, "seconds": seconds, "full_epoch": full,
           "images_per_s": images / seconds,
           "s_per_epoch": seconds if full else seconds / steps * steps_per_epoch}
    # per-step times are only meaningful where the host waits for each step (CPU)
    if device.type == "cpu" and len(stamps) == steps:
        durations = [b - a for a, b in zip(stamps, stamps[1:] + [t_end])]
        med = statistics.median(durations)
        out.update(median_step_s=med, median_step_s_per_epoch=med * steps_per_epoch,
                   median_step_images_per_s=epoch_images / (med * steps_per_epoch))
    return out


def memory_now(device: torch.device) -> dict:
    """Peak memory so far, in MB. CPU: the peak resident set of this process and of its largest
    finished child (DataLoader workers); CUDA: ``max_memory_allocated`` since the last reset."""
    out = {"rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KB on Linux
           "rss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def machine_info(device: torch.device) -> dict:
    import torchvision

    info = {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": torch.get_num_threads(), "host": socket.gethostname(),
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "gpu": None}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


# ----------------------------------------------------------------------------------------------
# What every measurement shares

@dataclass
class Setup:
    """The subset of a run, on the device, and the run's loss, weights and optimizer settings."""
    cfg: BenchConfig
    device: torch.device
    run_cfg: TwoStageConfig
    images: object  # uint8 NHWC numpy images of the training subset (for (c))
    labels: object  # their int64 numpy labels
    x: torch.Tensor  # the same images, uint8 NCHW on the device (for (a))
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: list
    std: list
    normalizer: data_loader.Normalizer
    counts: list
    num_classes: int
    loss_fn: object
    class_weights: torch.Tensor
    source: str

    @property
    def steps_per_epoch(self) -> int:
        return (len(self.y) + self.cfg.batch_size - 1) // self.cfg.batch_size

    def epoch_sizes(self) -> list[int]:
        """Batch sizes of the timed steps: a whole epoch, or its first ``max_steps`` (full) batches."""
        n, b = len(self.y), self.cfg.batch_size
        sizes = [min(b, n - s) for s in range(0, n, b)]
        return sizes if self.cfg.max_steps is None else sizes[:self.cfg.max_steps]


def prepare(cfg: BenchConfig) -> Setup:
    """Load the data and draw the subset as a run does (same code, seed and split)."""
    device = resolve_device(cfg.device)
    run_cfg = TwoStageConfig(cfg.model, cfg.imbalance_type, imb_factor=cfg.imb_factor,
                             batch_size=cfg.batch_size, val_per_class=cfg.val_per_class,
                             stat_per_class=cfg.stat_per_class, seed=cfg.seed,
                             device=str(device), precision=cfg.precision, channels_last=cfg.channels_last,
                             compile=cfg.compile, compile_mode=cfg.compile_mode, data_root=cfg.data_root)
    rd = prepare_data(run_cfg, device)
    data, split = rd.data, rd.split
    images, labels = data.train_x[split.train_idx], data.train_y[split.train_idx]
    # stage 2 of two_stage_ictta: focal loss with dynamic class weights in [min_weight, max_weight];
    # the statistic log(n_max / n_c) (rarer = harder) stands in for the previous epoch's class loss
    dyn = losses.DynamicClassWeights(data.num_classes, run_cfg.min_weight, run_cfg.max_weight,
                                     run_cfg.ema_alpha, run_cfg.dynamic_mode)
    counts_t = torch.tensor(split.counts, dtype=torch.float64)
    weights = dyn.update((counts_t.max() / counts_t).log())
    return Setup(cfg, device, run_cfg, images, labels, *rd.train, *rd.test,
                 data.mean, data.std,  # the run's constants: the whole training split's
                 rd.norm, list(split.counts), data.num_classes,
                 build_loss("ictta", split.counts, run_cfg, device), weights.to(device), data.source)


def build_model(s: Setup, channels_last: bool) -> torch.nn.Module:
    """The run's model, with the run's seeded init."""
    return run_model(replace(s.run_cfg, channels_last=channels_last), s.num_classes, s.device)


def compiled(model, cfg: BenchConfig):
    """The forward pass that (a) and (b) call: the model itself, or its compiled version."""
    return torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model


def make_optimizer(s: Setup, model) -> torch.optim.Optimizer:
    r = s.run_cfg
    return torch.optim.SGD(model.parameters(), lr=r.stage2_lr, momentum=r.momentum, weight_decay=r.weight_decay)


# ----------------------------------------------------------------------------------------------
# (a) the project's epoch, (b) the model step alone

def _warmup_batches(batches, steps: int, last_size: int):
    """``steps`` batches, then one of the epoch's last (short) batch size: a compiled forward
    specialises on it, and that compilation must not land in the timed epoch."""
    xb = yb = None
    for i, (xb, yb) in enumerate(batches):
        if i >= steps:
            break
        yield xb, yb
    if xb is not None and last_size:
        yield xb[:last_size], yb[:last_size]


def bench_project(s: Setup) -> tuple[dict, torch.nn.Module]:
    """(a): ``train_one_epoch`` over ``DeviceBatches``, as a run's stage-2 epoch. Returns the
    measurement and the trained model (for the evaluation timing)."""
    cfg, r = s.cfg, s.run_cfg
    model = build_model(s, cfg.channels_last)
    forward = compiled(model, cfg)
    optimizer = make_optimizer(s, model)
    batches = data_loader.DeviceBatches(s.x, s.y, cfg.batch_size, s.normalizer,
                                        torch.Generator().manual_seed(cfg.seed), channels_last=cfg.channels_last)
    spe = len(batches)
    lr_fn = partial(lr_at_step, steps_per_epoch=spe, cfg=r, stage=2)
    epoch = partial(train_one_epoch, model, optimizer=optimizer, loss_fn=s.loss_fn, lr_at=lr_fn,
                    start_step=r.stage1_epochs * spe, num_classes=s.num_classes,
                    class_weights=s.class_weights, precision=cfg.precision, forward=forward)
    if cfg.warmup_steps:
        epoch(_warmup_batches(batches, cfg.warmup_steps, len(s.y) % cfg.batch_size))
    clock = StepClock(batches, cfg.max_steps)
    sync(s.device)
    t0 = time.perf_counter()
    out = epoch(clock)  # ends with the epoch's one host sync (.item())
    sync(s.device)
    t1 = time.perf_counter()
    m = measurement(t1 - t0, s.epoch_sizes(), spe, len(s.y), clock.stamps, t1, s.device)
    m["train_loss"] = out["loss"]
    return m, model


def bench_model_step(s: Setup) -> dict:
    """(b): forward, loss, backward, SGD step on random tensors already on the device, in the same
    precision, memory format and batch sizes as (a)."""
    cfg = s.cfg
    model = build_model(s, cfg.channels_last)
    forward = compiled(model, cfg)
    optimizer = make_optimizer(s, model)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, *s.x.shape[1:], generator=g).to(s.device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(s.num_classes, (cfg.batch_size,), generator=g).to(s.device)
    model.train()

    def step(n: int):
        if forward is not model:  # as train_one_epoch: a new step for CUDA-graph trees
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(s.device, cfg.precision):
            logits = forward(x[:n])
        loss = s.loss_fn(logits, y[:n], s.class_weights, "mean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    last = len(s.y) % cfg.batch_size
    for n in [cfg.batch_size] * cfg.warmup_steps + ([last] if last and cfg.warmup_steps else []):
        step(n)
    sizes, stamps = s.epoch_sizes(), []
    sync(s.device)
    t0 = time.perf_counter()
    for n in sizes:
        stamps.append(time.perf_counter())
        step(n)
    sync(s.device)
    t1 = time.perf_counter()
    return measurement(t1 - t0, sizes, s.steps_per_epoch, len(s.y), stamps, t1, s.device)


def bench_eval(s: Setup, model) -> dict:
    """Full test-set :func:`train_eval.evaluate`, as a run calls it (eager model, run's batch size)."""
    cfg = s.cfg
    ev = partial(evaluate, model, normalizer=s.normalizer, train_counts=s.counts,
                 batch_size=cfg.eval_batch_size, precision=cfg.precision, channels_last=cfg.channels_last)
    ev(s.x_test[:cfg.eval_batch_size], s.y_test[:cfg.eval_batch_size])  # warm-up
    sync(s.device)
    t0 = time.perf_counter()
    res = ev(s.x_test, s.y_test)
    sync(s.device)
    return {"seconds": time.perf_counter() - t0, "images": len(s.y_test),
            "batch_size": cfg.eval_batch_size, "acc": res["acc"]}


# ----------------------------------------------------------------------------------------------
# (c) the field's usual pipeline: per-sample PIL transforms in a DataLoader, fp32 model

class PILImages(torch.utils.data.Dataset):
    """uint8 HWC images, each turned into a PIL image when it is fetched and then transformed, as
    torchvision's ``CIFAR10`` (and LDAM-DRW's ``IMBALANCECIFAR10``) ``__getitem__`` does."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_transform(mean, std, size=(32, 32), padding: int = 4):
    """LDAM-DRW's training transform, with the subset's normalisation constants."""
    import torchvision.transforms as T

    return T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(mean, std)])


def reference_loader(s: Setup, num_workers: int, seed: int | None = None) -> torch.utils.data.DataLoader:
    ds = PILImages(s.images, s.labels, reference_transform(s.mean, s.std, tuple(s.images.shape[1:3])))
    return torch.utils.data.DataLoader(
        ds, batch_size=s.cfg.batch_size, shuffle=True, num_workers=num_workers,
        pin_memory=s.device.type == "cuda", generator=torch.Generator().manual_seed(s.cfg.seed if seed is None else seed))


def _reference_step(s: Setup, model, optimizer, xb, yb) -> float:
    """LDAM-DRW's training step: copy the batch, fp32 forward, loss, backward, step, and read the
    loss for the running meter (``loss.item()``: a host sync per batch on CUDA)."""
    xb, yb = xb.to(s.device, non_blocking=True), yb.to(s.device, non_blocking=True)
    loss = s.loss_fn(model(xb), yb, s.class_weights, "mean")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def bench_reference(s: Setup) -> dict:
    """(c): probe ``num_workers`` over the candidates (this also warms the model up), then time an
    epoch (or ``max_steps`` steps) with the fastest. Each epoch starts its workers afresh, as the
    field's code does (no persistent workers)."""
    cfg = s.cfg
    model = build_model(s, channels_last=False)
    optimizer = make_optimizer(s, model)
    model.train()
    candidates = worker_candidates(cfg)
    probe = {}
    for nw in candidates:
        it = iter(reference_loader(s, nw, seed=cfg.seed + 1 + nw))
        for _ in range(max(cfg.warmup_steps, 1)):  # includes the workers' start-up
            _reference_step(s, model, optimizer, *next(it))
        if len(candidates) > 1:
            sync(s.device)
            t0 = time.perf_counter()
            for _ in range(cfg.probe_steps):
                _reference_step(s, model, optimizer, *next(it))
            sync(s.device)
            probe[nw] = cfg.probe_steps * cfg.batch_size / (time.perf_counter() - t0)
        del it  # stops its workers
    best = max(probe, key=probe.get) if probe else candidates[0]
    loader = reference_loader(s, best)
    sizes, stamps = [], []
    sync(s.device)
    t0 = time.perf_counter()
    for i, (xb, yb) in enumerate(loader):
        if cfg.max_steps is not None and i >= cfg.max_steps:
            break
        stamps.append(time.perf_counter())
        _reference_step(s, model, optimizer, xb, yb)
        sizes.append(len(yb))
    sync(s.device)
    t1 = time.perf_counter()
    m = measurement(t1 - t0, sizes, s.steps_per_epoch, len(s.y), stamps, t1, s.device)
    m.update(num_workers=best, probe_images_per_s=probe, probe_steps=cfg.probe_steps if probe else 0)
    return m


# ----------------------------------------------------------------------------------------------
# The run

def run_bench(cfg: BenchConfig, command: str | None = None) -> dict:
    """Run (a), (b), the evaluation and (c); write the JSON and return its contents."""
    validate(cfg)
    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _run_bench(cfg, command)
    finally:  # the caller's settings are left as they were
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _run_bench(cfg: BenchConfig, command: str | None) -> dict:
    device = resolve_device(cfg.device)
    say = (lambda *a: None) if cfg.quiet else partial(print, flush=True)
    load = {"start": os.getloadavg()}
    started = datetime.datetime.now().astimezone()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as a run (and LDAM-DRW) does
    s = prepare(cfg)
    res = {"config": asdict(cfg), "command": command, "date": started.isoformat(timespec="seconds"),
           "git_commit": git_commit(), "device": device.type, "machine": machine_info(device),
           "data": {"source": s.source, "scenario": cfg.imbalance_type, "imb_factor": cfg.imb_factor,
                    "n_train": len(s.y), "class_counts": s.counts, "n_test": len(s.y_test),
                    "batch_size": cfg.batch_size, "steps_per_epoch": s.steps_per_epoch},
           "results": {}, "memory": {"after_load": memory_now(device)}}
    say(f"bench: {cfg.model} on {device} ({res['machine']['gpu'] or res['machine']['cpu_model']}), "
        f"{cfg.precision}, {len(s.y)} images, {s.steps_per_epoch} steps/epoch, load {load['start'][0]:.2f}")

    def section(name: str, fn, *args):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        say(f"  {name} ...")
        out = fn(*args)
        load[name] = os.getloadavg()
        res["memory"][name] = memory_now(device)
        return out

    res["results"]["a_project"], model = section("a_project", bench_project, s)
    res["results"]["b_model_step"] = section("b_model_step", bench_model_step, s)
    res["eval"] = section("eval", bench_eval, s, model)
    del model
    peak = memory_now(device)  # what the project's own work (a run's) needed at most
    if device.type == "cuda":
        peak["cuda_max_allocated_mb"] = max(res["memory"][k]["cuda_max_allocated_mb"]
                                            for k in ("a_project", "b_model_step", "eval"))
    res["memory"]["peak_before_c"] = peak
    res["results"]["c_reference"] = section("c_reference", bench_reference, s)
    res["memory"]["peak"] = memory_now(device)
    load["end"] = os.getloadavg()
    res["load_avg"] = load
    a, b, c = (res["results"][k] for k in ("a_project", "b_model_step", "c_reference"))
    res["ratios"] = {"a_over_b": a["images_per_s"] / b["images_per_s"],
                     "a_over_c": a["images_per_s"] / c["images_per_s"]}
    if all("median_step_s" in m for m in (a, b, c)):
        res["ratios"].update(a_over_b_median_step=b["median_step_s"] / a["median_step_s"],
                             a_over_c_median_step=c["median_step_s"] / a["median_step_s"])
    res["seconds_total"] = (datetime.datetime.now().astimezone() - started).total_seconds()
    out = Path(cfg.out) if cfg.out else HERE / "results" / "bench" / f"bench_{device.type}_{cfg.model.lower()}.json"
    write_json(out, res)
    res["path"] = str(out)
    say(format_table(res))
    say(f"written: {out}")
    return res


def format_table(res: dict) -> str:
    cfg = res["config"]
    rows = [("(a) project epoch", f"{cfg['precision']}{', channels_last' if cfg['channels_last'] else ''}"
             f"{', compile ' + cfg['compile_mode'] if cfg['compile'] else ''}", res["results"]["a_project"]),
            ("(b) model step only", "random tensors on device", res["results"]["b_model_step"]),
            ("(c) DataLoader + PIL", f"fp32, num_workers={res['results']['c_reference']['num_workers']}",
             res["results"]["c_reference"])]
    lines = [f"{'pipeline':<22}{'setting':<36}{'images/s':>10}{'s/epoch':>10}{'median-step s/epoch':>21}"]
    for name, setting, m in rows:
        med = f"{m['median_step_s_per_epoch']:21.2f}" if "median_step_s_per_epoch" in m else f"{'-':>21}"
        note = "" if m["full_epoch"] else f"  ({m['steps']} steps, extrapolated)"
        lines.append(f"{name:<22}{setting:<36}{m['images_per_s']:10.1f}{m['s_per_epoch']:10.2f}{med}{note}")
    r = res["ratios"]
    lines.append(f"a/b = {r['a_over_b']:.3f}   a/c = {r['a_over_c']:.2f}"
                 + (f"   (median-step: a/b = {r['a_over_b_median_step']:.3f}, a/c = {r['a_over_c_median_step']:.2f})"
                    if "a_over_b_median_step" in r else ""))
    ev = res["eval"]
    lines.append(f"test-set evaluation ({ev['images']} images, batch {ev['batch_size']}): {ev['seconds']:.2f} s")
    mem = res["memory"]
    if res["device"] == "cuda":
        lines.append(f"peak CUDA memory allocated: (a) {mem['a_project']['cuda_max_allocated_mb']:.0f} MB, "
                     f"(b) {mem['b_model_step']['cuda_max_allocated_mb']:.0f} MB, "
                     f"eval {mem['eval']['cuda_max_allocated_mb']:.0f} MB, "
                     f"(c) {mem['c_reference']['cuda_max_allocated_mb']:.0f} MB")
    lines.append(f"peak RSS: {mem['peak_before_c']['rss_self_mb']:.0f} MB after a/b/eval, "
                 f"{mem['peak']['rss_self_mb']:.0f} MB overall; largest child process "
                 f"{mem['peak']['rss_children_mb']:.0f} MB (forked: shares the parent's pages)")
    la = res["load_avg"]
    lines.append(f"load average (1 min): start {la['start'][0]:.2f}, end {la['end'][0]:.2f} "
                 f"on {res['machine']['cpu_count']} CPUs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from main import build_parser, config_from_args

    parser = build_parser(BenchConfig, __doc__.split("\n\n")[0], groups=None)
    args = parser.parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]) \
        if argv is None else shlex.join(["bench.py", *argv])
    try:
        run_bench(config_from_args(args, BenchConfig), command)
    except ValueError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
