"""How long runs will take here: a few timed training steps of a model, scaled by a run's work.

:func:`time_model` times ``steps`` training steps (after one untimed step, which allocates) and one
evaluation pass, on random images of the run's batch size on the run's device, through the same
code a run uses (:func:`train_eval.train_one_epoch`, :func:`train_eval.predict`): the model step is
the whole cost of an epoch here (README, Speed). :func:`run_seconds` scales that by a run's steps
and evaluated images.
"""
from __future__ import annotations

import contextlib
import math
import statistics
import time

import torch

import losses
from data_loader import Normalizer
from model import get_model
from train_eval import predict, resolve_device, train_one_epoch


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's CPU thread count set to ``n`` inside the block (None: unchanged), as a run sets it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_model(cfg, num_classes: int, image_size=(32, 32), steps: int = 3) -> dict:
    """``step_s``, seconds per training step of ``cfg``'s model at its batch size, device, precision
    and memory format (the median of ``steps`` steps); ``eval_image_s``, seconds per evaluated image."""
    device = resolve_device(cfg.device)
    with _threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_model(cfg.model_name, num_classes).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        x = torch.randint(0, 256, (cfg.batch_size, 3, *image_size), dtype=torch.uint8, device=device)
        y = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
        norm = Normalizer([0.5] * 3, [0.25] * 3, device)
        xb = norm(x).contiguous(memory_format=torch.channels_last) if cfg.channels_last else norm(x)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def train(n: int) -> float:
            t0 = time.perf_counter()
            train_one_epoch(model, [(xb, y)] * n, optimizer, losses.focal_loss, lambda step: 0.01, 0, num_classes,
                            precision=cfg.precision)  # ends with a host sync (.item())
            return time.perf_counter() - t0

        train(1)
        step_s = statistics.median(train(1) for _ in range(steps))  # the median resists a busy machine's spikes
        t0 = time.perf_counter()
        predict(model, x, norm, cfg.eval_batch_size, cfg.precision, cfg.channels_last).cpu()  # .cpu(): a sync
        eval_image_s = (time.perf_counter() - t0) / len(x)
    return {"step_s": step_s, "eval_image_s": eval_image_s}


def evaluations(epochs: int, eval_every: int, done: int = 0) -> int:
    """Evaluated epochs of a stage of ``epochs`` after its first ``done``: every ``eval_every``-th,
    and always the last."""
    last = 1 if epochs % eval_every and done < epochs else 0
    return epochs // eval_every - done // eval_every + last


def epochs_left(cfg, trains_stage1: bool = True, resume_from: tuple[int, int] | None = None) -> tuple[int, int]:
    """Epochs of stage 1 and stage 2 that a run still trains: all of them, none of stage 1 where
    it comes from a shared checkpoint, and those after ``resume_from`` (stage, last finished epoch)
    where it resumes from its own."""
    stage1 = cfg.stage1_epochs if trains_stage1 else 0
    if resume_from is None:
        return stage1, cfg.stage2_epochs
    stage, epoch = resume_from
    if stage == 1:
        return cfg.stage1_epochs - epoch, cfg.stage2_epochs
    return 0, cfg.stage2_epochs - epoch


def passes_per_step(cfg) -> int:
    """Forward-backward passes of one training step: two with SAM (``sam_rho > 0``: the ascent step,
    then the update from the perturbed weights), else one."""
    return 2 if cfg.sam_rho > 0 else 1


def run_seconds(cfg, sizes: dict, timing: dict, trains_stage1: bool = True,
                resume_from: tuple[int, int] | None = None) -> float:
    """Seconds of what is left of one run (:func:`epochs_left`): its training steps times ``step_s``
    (a plain step's time) times :func:`passes_per_step`, plus the images it evaluates times
    ``eval_image_s`` (val and test after each evaluated epoch; the statistic split before each
    stage-2 epoch of the val_loss and val_error modes). ``sizes`` holds ``train``, ``val``, ``test``
    and ``stat`` image counts."""
    stage1, stage2 = epochs_left(cfg, trains_stage1, resume_from)
    steps_per_epoch = math.ceil(sizes["train"] / cfg.batch_size)
    evaluated = (evaluations(cfg.stage1_epochs, cfg.eval_every, cfg.stage1_epochs - stage1)
                 + evaluations(cfg.stage2_epochs, cfg.eval_every, cfg.stage2_epochs - stage2)) \
        * (sizes["val"] + sizes["test"])
    if cfg.method == "two_stage_ictta" and cfg.dynamic_mode in ("val_loss", "val_error"):
        evaluated += stage2 * sizes["stat"]
    steps = (stage1 + stage2) * steps_per_epoch
    return steps * passes_per_step(cfg) * timing["step_s"] + evaluated * timing["eval_image_s"]


def format_duration(seconds: float) -> str:
    """``3 d 4 h``, ``2 h 13 min``, ``5 min``, ``40 s``."""
    minutes = round(seconds / 60)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
