"""One run of the two-stage recipe: its stages, epochs, checkpoints and resume.

Every method (:data:`methods.METHODS`) is two stages over one model, one data stream and one
learning-rate schedule:

* **Stage 1** (``stage1_epochs``) trains from scratch with the method's stage-1 loss: plain
  cross-entropy for the decoupled methods (Kang et al. 2020), this project's method included.
* **Stage 2** (``stage2_epochs``) continues from the stage-1 weights and optimizer with the method's
  stage-2 loss and class weights. For ``two_stage_ictta`` these weights come from
  :class:`losses.DynamicClassWeights`: a per-class statistic (``dynamic_mode``), smoothed over epochs
  with an EMA (``ema_alpha``) and mapped into ``[min_weight, max_weight]``, recomputed every epoch.

Methods whose stage 1 is the same (same loss, model, data, seed and stage-1 settings) share it: it is
trained once per ``log_dir`` and its checkpoint reused (``stage1_id`` in every row says which).

``run_two_stage_ictta_on_scenario(model_name, imbalance_type, **settings)`` runs one configuration
(:class:`config.TwoStageConfig` lists every setting with its default) and returns a dict of
results. It writes, in ``log_dir``: ``results_<exp>_<model>_<scenario>_imb<f>_seed<s>.csv`` (one
row per epoch and split), ``.json`` beside it (the config, the method, the git commit, the code
fingerprint, the status and the results) and, once finished, ``.model.pt`` (the final weights and
what rebuilds and evaluates them, see :mod:`saved_model`). It checkpoints every epoch and resumes
from the last finished epoch when rerun; a finished run is returned from its JSON without
retraining.
"""
from __future__ import annotations

import inspect
import os
import platform
import socket
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import cli
import data_loader
import live_curves
import losses
import runfiles
import saved_model
from config import (CSV_NAMES, NOT_IDENTITY, TwoStageConfig, config_hash, csv_value, data_folder, identity_defaults,
                    made_by_other_code, run_name, settings_changed, stage1_hash, stage1_path,
                    validate_config)
from methods import METHODS, EvalContext, Method, build_loss, lr_at_step, static_weights
from model import get_model
from results_logger import (SCALAR_METRICS, RunLogger, atomic_torch_save, code_fingerprint, cpu_model, git_commit,
                            now, read_json, run_command, summarize_rows, write_json)
from runfiles import RunLock
from train_eval import NonFiniteError, evaluate, precision_advice, resolve_device, train_one_epoch


# ----------------------------------------------------------------------------------------------
# Pieces of a run

def data_read_elsewhere(cfg: TwoStageConfig, meta: dict) -> str | None:
    """The folder a finished run read its data from (``meta["data_source"]``, resolved), when it
    is not ``cfg``'s data root nor inside it; None when it is, or when the recorded path is
    missing or relative (no telling from where it was read)."""
    source = meta.get("data_source")
    if not source or not Path(source).is_absolute():
        return None
    root, read = data_folder(cfg), Path(source).resolve()
    return None if read == root or root in read.parents else source


def is_finished(cfg: TwoStageConfig, meta: dict | None) -> bool:
    """Whether ``meta`` (the run's JSON) records a finished run of exactly these settings, made by
    this code (or kept by ``accept_code_change``), whose CSV exists: what a rerun skips, and what
    the grid's ``--status`` counts as done."""
    return (meta is not None and meta.get("status") == "finished" and meta.get("run_id") == config_hash(cfg)
            and made_by_other_code(meta, cfg) is None
            and runfiles.run_paths(cfg.log_dir, run_name(cfg))["csv"].exists())


def _metric_row(metrics: dict, stage: int, epoch: int, global_epoch: int, split: str, lr: float,
                train_loss: float, seconds: float, weights, extra: dict) -> dict:
    row = {"stage": stage, "epoch": epoch, "global_epoch": global_epoch, "split": split, "lr": lr,
           "train_loss": train_loss, "seconds": round(seconds, 3)}
    row.update({k: metrics[k] for k in SCALAR_METRICS})
    row.update({f"f1_{c}": float(v) for c, v in enumerate(metrics["f1"])})
    row.update({f"acc_{c}": float(v) for c, v in enumerate(metrics["recall"])})
    row.update({f"w_{c}": float(v) for c, v in enumerate(weights)})
    row.update(extra)
    return row


# ----------------------------------------------------------------------------------------------
# The run

def run_two_stage(cfg: TwoStageConfig) -> dict:
    """Run one configuration end to end (see the module docstring); returns the results dict."""
    validate_config(cfg)
    log_dir = Path(cfg.log_dir)
    if cli.nearest_existing(log_dir).is_file():
        raise ValueError(f"log_dir={str(log_dir)!r}: {cli.nearest_existing(log_dir)} is a file, not a folder")
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        probe = log_dir / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"log_dir={str(log_dir)!r} cannot be written: {e}") from e
    name = run_name(cfg)
    paths = runfiles.run_paths(log_dir, name)
    run_id = config_hash(cfg)
    previous = read_json(paths["config"])
    if previous is not None and previous.get("run_id") != run_id and paths["csv"].exists():
        changed = settings_changed(previous.get("config") or {}, cfg) or f"run_id {previous.get('run_id')} != {run_id}"
        raise ValueError(f"exp_name={cfg.exp_name!r}: {paths['csv']} already holds a run with other "
                         f"settings ({changed}); choose another exp_name or log_dir")
    if cfg.resume and is_finished(cfg, previous):  # whoever holds its lock now
        return _reuse_finished(cfg, name, previous)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with RunLock(runfiles.lock_path(log_dir, name)):
        previous = read_json(paths["config"])  # again, under the lock: another process may have finished it
        if cfg.resume and is_finished(cfg, previous):
            return _reuse_finished(cfg, name, previous)
        stale = previous is not None and previous.get("status") == "finished" and made_by_other_code(previous, cfg)
        if cfg.resume and stale:
            print(f"rerunning {name}: its finished result was {stale}", file=sys.stderr)
        runfiles.remove_attempt_tmp(log_dir, name)  # of an attempt that was killed
        runfiles.remove_dead_writers_tmp(stage1_path(cfg))  # the shared stage 1 is not ours alone
        return _run_locked(cfg, paths, run_id)


@dataclass
class RunData:
    """A run's data on the device: the long-tailed training subset and the held-out splits, each
    ``(uint8 images, labels)``, with the normalisation they share."""
    data: data_loader.ImageData
    split: data_loader.Split
    norm: data_loader.Normalizer
    train: tuple
    val: tuple
    stat: tuple
    test: tuple

    @property
    def counts(self) -> list:
        return self.split.counts

    @property
    def num_classes(self) -> int:
        return self.data.num_classes


def prepare_data(cfg: TwoStageConfig, device: torch.device) -> RunData:
    """Load the dataset, draw the run's subset and splits (seeded by ``cfg.seed``), re-encode them at
    ``cfg.jpeg_quality`` if set (normalised with the stored images' constants), put them on ``device``."""
    data = data_loader.load_dataset(cfg.data_root, cfg.download, cfg.dataset)
    split = data_loader.make_split(data.train_y, cfg.imbalance_type, cfg.imb_factor, n_max=cfg.n_max,
                                   val_per_class=cfg.val_per_class, stat_per_class=cfg.stat_per_class,
                                   seed=cfg.seed)
    def to_dev(x):
        x = x if cfg.jpeg_quality is None else data_loader.recompress_jpeg(x, cfg.jpeg_quality)
        return data_loader.to_device_images(x, device)

    on_device = lambda idx: (to_dev(data.train_x[idx]), torch.from_numpy(data.train_y[idx]).to(device))
    return RunData(data, split, data_loader.Normalizer(data.mean, data.std, device),
                   on_device(split.train_idx), on_device(split.val_idx), on_device(split.stat_idx),
                   (to_dev(data.test_x), torch.from_numpy(data.test_y).to(device)))


def build_model(cfg: TwoStageConfig, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The run's model with its seeded init (the caller's global RNG untouched), on ``device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = get_model(cfg.model_name, num_classes, normed_classifier=METHODS[cfg.method].normed_classifier,
                          normed_init=cfg.normed_init)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _reuse_finished(cfg: TwoStageConfig, name: str, previous: dict) -> dict:
    """The results of a run finished before, and a notice if they were read from other data."""
    elsewhere = data_read_elsewhere(cfg, previous)
    if elsewhere:
        print(f"{name}: reusing its finished result, read from {elsewhere}; data_root is not part of a "
              f"run's identity (a moved copy reuses its runs): to train on this data_root, pass "
              f"--no-resume (resume=False) or another exp_name", file=sys.stderr)
    return {**previous["results"], "skipped": True}


@dataclass
class RunState:
    """The counters one epoch hands the next (and a checkpoint keeps)."""
    stage: int = 1
    epoch: int = 0  # last finished epoch of this stage
    step: int = 0  # optimizer steps so far, both stages
    train_class_loss: torch.Tensor | None = None  # per-class training loss of the last epoch
    max_norm: float | None = None  # the classifier rows' MaxNorm radius in stage 2 (weight balancing)


@dataclass
class Run:
    """What a run trains and carries between epochs; ``snapshot``/``restore`` are its checkpoint."""
    cfg: TwoStageConfig
    method: Method
    data: RunData
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the batch order's; both stages draw from it, so the stream goes on
    batches: data_loader.DeviceBatches
    dyn: losses.DynamicClassWeights
    logger: RunLogger
    made_by: dict  # what made this run, oldest first: "code_fingerprints", "cpu_threads" (lists, in its JSON)
    state: RunState = field(default_factory=RunState)
    confusion_test: dict = field(default_factory=dict)  # "stage1"/"stage2": the test matrix at the stage's end
    freeze_bn_stats: bool = False  # in stage 2, as the method's Stage2Start says

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        c = self.cfg
        return torch.optim.SGD(params, lr=c.stage1_lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def enter_stage2(self, fresh: bool) -> None:
        """Start stage 2 as the method says: go on, or a new optimizer and batch stream
        (``fresh``: not resumed from a stage-2 checkpoint)."""
        start = self.method.enter_stage2(self.model, fresh, self.cfg.seed)
        if start is None:
            return
        self.freeze_bn_stats = start.freeze_bn_stats
        if fresh:  # a resumed run keeps the radius measured on its stage-1 weights
            self.state.max_norm = start.max_norm
        self.optimizer = self.make_optimizer(start.params)
        self.batches = data_loader.DeviceBatches(*self.data.train, self.cfg.batch_size, self.data.norm,
                                                 self.generator, sampler=start.sampler,
                                                 channels_last=self.cfg.channels_last)

    def evaluate(self, stage: int) -> dict:
        """The method's metrics on test and validation after an epoch of ``stage``."""
        c = self.cfg
        ctx = EvalContext(self.model, self.data.norm, self.data.counts, self.data.val, self.data.test,
                          c.eval_batch_size, c.precision, c.channels_last)
        return self.method.evaluate(ctx, stage)

    def snapshot(self, run_id: str) -> dict:
        return {"run_id": run_id, "code_fingerprint": code_fingerprint(), **self.made_by,
                "st": dict(vars(self.state)), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "data": self.batches.state_dict(),
                "dyn": self.dyn.state_dict(), "rows": self.logger.rows, "confusion_test": self.confusion_test}

    def restore(self, snap: dict) -> None:
        self.state = RunState(**snap["st"])
        if self.state.stage == 2:  # the stage-2 model and optimizer have the shapes to load into
            self.enter_stage2(False)
        self.model.load_state_dict(snap["model"])
        self.optimizer.load_state_dict(snap["optimizer"])
        self.batches.load_state_dict(snap["data"])
        self.dyn.load_state_dict(snap["dyn"])
        self.logger.rows = list(snap["rows"])
        self.confusion_test = dict(snap.get("confusion_test", {}))  # a checkpoint kept by accept_code_change
        for key, seen in self.made_by.items():                        # may come from code that wrote none
            seen[:] = list(dict.fromkeys(snap.get(key, []) + seen))


def start_run(cfg: TwoStageConfig, rd: RunData, model, logger: RunLogger, made_by: dict) -> Run:
    """A run at its first step: SGD on every parameter, uniform batches from the seeded generator."""
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = data_loader.DeviceBatches(*rd.train, cfg.batch_size, rd.norm, gen, channels_last=cfg.channels_last)
    dyn = losses.DynamicClassWeights(rd.num_classes, cfg.min_weight, cfg.max_weight, cfg.ema_alpha,
                                     cfg.dynamic_mode, cfg.prior_blend, rd.counts, cfg.weight_map, cfg.map_power)
    run = Run(cfg, METHODS[cfg.method], rd, model, None, gen, batches, dyn, logger, made_by)
    run.optimizer = run.make_optimizer(model.parameters())
    return run


def class_weights(run: Run, stage: int) -> torch.Tensor | None:
    """The class weights of the coming epoch: static ones from the counts, or dynamic ones from the
    statistic of the epoch just before this one."""
    kind = run.method.weights(stage)
    if kind != "dynamic":
        return static_weights(kind, run.data.counts, run.cfg)
    images = run.data.train if run.cfg.dynamic_mode == "train_eval_loss" else run.data.stat
    stat_fn = partial(_measured_stat, run.model, run.data.norm, run.data.counts, run.cfg, images)
    return run.dyn.update(_dynamic_stat(run.cfg.dynamic_mode, run.state, stat_fn))


def _run_locked(cfg: TwoStageConfig, paths: dict, run_id: str) -> dict:
    """The run, its lock held: set up the data, model and :class:`Run`, resume what can be resumed,
    then the epoch loop (:func:`_train_stages`), and the final files."""
    device = resolve_device(cfg.device)
    if advice := precision_advice(device, cfg.precision):
        warnings.warn(advice, stacklevel=2)
    meta = _run_record(cfg, paths, run_id, device)
    rd = prepare_data(cfg, device)
    meta.update(_data_facts(rd))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # CUDA runs are not bitwise reproducible anyway (README)
    model = build_model(cfg, rd.num_classes, device)
    forward = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
    curves = live_curves.TensorBoardCurves(Path(cfg.log_dir) / "tensorboard" / paths["csv"].stem) \
        if cfg.tensorboard else None
    logger = RunLogger(paths["csv"], _row_identity(cfg, run_id, meta["stage1_id"]), mirror=curves)
    run = start_run(cfg, rd, model, logger, {k: meta[k] for k in ("code_fingerprints", "cpu_threads")})
    resumed = _resume(run, cfg, paths, run_id, device)
    meta.update(resumed)
    write_json(paths["config"], meta)

    t_run = time.perf_counter()
    try:
        _train_stages(run, forward, paths, run_id)
    except BaseException as e:
        meta.update(**_confusion_of(run), status="failed" if isinstance(e, Exception) else "interrupted",
                    error=f"{type(e).__name__}: {e}", failed=now())
        logger.flush()
        write_json(paths["config"], meta)
        raise
    finally:
        if curves is not None:
            curves.close()

    results = {"run_id": run_id, "stage1_id": meta["stage1_id"], **summarize_rows(logger.full_rows()),
               "paths": {k: str(v) for k, v in paths.items() if k != "checkpoint"},
               **resumed,
               "seconds": time.perf_counter() - t_run}
    saved_model.save(paths["model"], run.model, cfg, rd.data, rd.counts, logger.rows, run_id, code_fingerprint())
    meta.update(**_confusion_of(run), status="finished", finished=now(), results=results)
    logger.flush()
    write_json(paths["config"], meta)
    paths["checkpoint"].unlink(missing_ok=True)
    return results


def _confusion_of(run: Run) -> dict:
    """The run JSON's ``confusion_test`` (the stages that ended), or nothing before any did."""
    return {"confusion_test": run.confusion_test} if run.confusion_test else {}


def _run_record(cfg: TwoStageConfig, paths: dict, run_id: str, device: torch.device) -> dict:
    """The run's JSON as it starts: its identity, code, machine and files."""
    return {"run_id": run_id, "stage1_id": stage1_hash(cfg), "config": asdict(cfg),
            "method": METHODS[cfg.method].facts(), "command": run_command(),
            "git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "machine": platform.machine(), "processor": cpu_model(),
            # CPU results are bitwise reproducible for a given thread count, not across counts
            "torch_threads": torch.get_num_threads(), "host": socket.gethostname(), "started": now(),
            "status": "running", "paths": {k: str(v) for k, v in paths.items()},
            "code_fingerprint": code_fingerprint(), "code_fingerprints": [code_fingerprint()],
            "setting_defaults": identity_defaults(),  # lets the analysis drop defaults from a configuration's id
            "cpu_threads": [torch.get_num_threads()] if device.type == "cpu" else []}


def _data_facts(rd: RunData) -> dict:
    """What the run's JSON records of its data."""
    return dict(class_counts=rd.counts, classes=list(rd.data.classes),
                data_source=str(Path(rd.data.source).resolve()), n_train=int(len(rd.split.train_idx)),
                n_val=int(len(rd.split.val_idx)), n_stat=int(len(rd.split.stat_idx)),
                normalization={"mean": rd.data.mean, "std": rd.data.std, "over": "the whole training split"})


def _train_stages(run: Run, forward, paths: dict, run_id: str) -> None:
    """Both stages' epochs from where ``run.state`` stands, with a progress bar; stage 1 is shared
    (``reuse_stage1``) once it ends."""
    cfg, st = run.cfg, run.state
    bar = tqdm(total=cfg.stage1_epochs + cfg.stage2_epochs, disable=cfg.quiet, leave=False, dynamic_ncols=True,
               desc=f"{cfg.model_name}/{cfg.imbalance_type}/{cfg.exp_name or cfg.method}")
    bar.update(st.epoch + (cfg.stage1_epochs if st.stage == 2 else 0))
    try:
        for stage, n_epochs in ((1, cfg.stage1_epochs), (2, cfg.stage2_epochs)):
            if stage < st.stage or n_epochs == 0:
                continue
            if stage == 2 and st.stage == 1:  # entering stage 2 now
                st.stage, st.epoch = 2, 0
                run.enter_stage2(True)
            loss_fn = build_loss(run.method.loss(stage), run.data.counts, cfg, resolve_device(cfg.device))
            lr_fn = partial(lr_at_step, steps_per_epoch=len(run.batches), cfg=cfg, stage=stage)
            for epoch in range(st.epoch + 1, n_epochs + 1):
                _train_epoch(run, forward, stage, epoch, n_epochs, loss_fn, lr_fn, bar)
                atomic_torch_save(run.snapshot(run_id), paths["checkpoint"])
                bar.update(1)
            if stage == 1 and cfg.reuse_stage1:
                _share_stage1(run, cfg, run_id)
    finally:
        bar.close()


def _train_epoch(run: Run, forward, stage: int, epoch: int, n_epochs: int, loss_fn, lr_fn, bar) -> None:
    """One epoch of ``stage``: train, then on evaluation epochs evaluate and log (the last epoch of
    a stage also keeps its test confusion matrix in ``run``, so in its checkpoints); flush the rows."""
    cfg, st, C = run.cfg, run.state, run.data.num_classes
    t0 = time.perf_counter()
    weights = class_weights(run, stage)
    out = train_one_epoch(run.model, run.batches, run.optimizer, loss_fn, lr_fn, st.step, C,
                          class_weights=weights, precision=cfg.precision,
                          normalization=run.method.normalization, forward=forward,
                          mixup_alpha=cfg.mixup_alpha if stage == 1 else 0.0, mixup_generator=run.generator,
                          sam_rho=cfg.sam_rho, max_norm=st.max_norm if stage == 2 else None,
                          freeze_bn_stats=run.freeze_bn_stats and stage == 2)
    st.step += out["steps"]
    st.train_class_loss = out["class_loss"]
    last = epoch == n_epochs
    if last or epoch % cfg.eval_every == 0:
        res = run.evaluate(stage)
        row_w = (weights if weights is not None else torch.ones(C)).tolist()
        _log_epoch(run.logger, res, stage, epoch, epoch + (cfg.stage1_epochs if stage == 2 else 0),
                   lr_fn(st.step - 1), out["loss"], time.perf_counter() - t0, row_w)
        if last:
            run.confusion_test[f"stage{stage}"] = res["test"]["confusion"]
        bar.set_postfix(stage=stage, loss=f"{out['loss']:.3f}",
                        val_f1=f"{res.get('val', res['test'])['macro_f1']:.3f}")
    st.epoch = epoch
    run.logger.flush()


def _row_identity(cfg: TwoStageConfig, run_id: str, stage1_id: str) -> dict:
    """The identity columns of every CSV row: the ids and every setting that is part of it."""
    return {"run_id": run_id, "stage1_id": stage1_id, "exp_name": cfg.exp_name or cfg.method,
            **{CSV_NAMES.get(k, k): csv_value(v) for k, v in asdict(cfg).items() if k not in NOT_IDENTITY + ("exp_name",)}}


def _resume(run: Run, cfg: TwoStageConfig, paths: dict, run_id: str, device) -> dict:
    """Restore ``run`` from its own checkpoint, else from a shared stage 1 made by this code (also
    where its own is partway through stage 1 and the shared one is finished).
    Returns what the run's JSON records of it: ``resumed_from``, the (stage, epoch) resumed from, or
    None; and ``stage1_reused``, a bool. A checkpoint made with other CPU thread counts gets a notice
    (the numbers then differ in the last bits from an uninterrupted run's; ``cpu_threads`` in the
    run's JSON lists every count that made it)."""
    name = paths["csv"].stem

    def usable(path: Path, what: str) -> dict | None:
        """The checkpoint at ``path`` if it exists and was made by this code (or is accepted)."""
        if not path.exists():
            return None
        snap = load_checkpoint(path, device)
        why_not = made_by_other_code(snap, cfg)
        if why_not:
            print(f"{name}: not reusing {what} {path.name}: {why_not}", file=sys.stderr)
            return None
        return snap

    def note_other_threads(snap: dict, path: Path) -> None:
        other = [n for n in snap.get("cpu_threads", []) if n != torch.get_num_threads()]
        if other and device.type == "cpu":
            print(f"{name}: {path.name} was made on {' and '.join(map(str, other))} CPU thread(s), this run "
                  f"uses {torch.get_num_threads()}: its numbers will differ in the last bits from an "
                  f"uninterrupted run's (--threads {other[-1]} gives the same ones)", file=sys.stderr)

    own = usable(paths["checkpoint"], "checkpoint") if cfg.resume else None
    own = own if own is not None and own.get("run_id") == run_id else None
    if own is not None and gives_way_to_shared_stage1(cfg, own["st"]):
        print(f"{name}: going on from the finished shared stage 1, not from its own checkpoint at stage-1 "
              f"epoch {own['st']['epoch']}", file=sys.stderr)
        own = None
    if own is not None:
        note_other_threads(own, paths["checkpoint"])
        run.restore(own)
        return {"resumed_from": (run.state.stage, run.state.epoch), "stage1_reused": False}
    snap = usable(stage1_path(cfg), "stage 1") if cfg.reuse_stage1 and cfg.stage1_epochs > 0 else None
    if snap is not None:
        note_other_threads(snap, stage1_path(cfg))
        run.restore(snap)
        return {"resumed_from": None, "stage1_reused": True}
    return {"resumed_from": None, "stage1_reused": False}


def _share_stage1(run: Run, cfg: TwoStageConfig, run_id: str) -> None:
    """Save the finished stage 1 for the runs that share it, unless a current one is there."""
    stage1_file = stage1_path(cfg)
    stage1_file.parent.mkdir(exist_ok=True)
    if not has_current_stage1(cfg):
        atomic_torch_save(run.snapshot(run_id), stage1_file)


def gives_way_to_shared_stage1(cfg: TwoStageConfig, own: dict) -> bool:
    """Whether a run whose own checkpoint holds the state ``own`` (its ``stage`` and ``epoch``) goes
    on from the shared stage 1 instead: when it is partway through stage 1 and the shared one of its
    settings is finished (another run trained it meanwhile), which its pairs then share and which
    costs no more epochs."""
    partway = own["stage"] == 1 and own["epoch"] < cfg.stage1_epochs
    return partway and cfg.reuse_stage1 and has_current_stage1(cfg)


def has_current_stage1(cfg: TwoStageConfig) -> bool:
    """Whether the shared stage-1 checkpoint of ``cfg`` is there and a run would reuse it: made by
    this code, or ``accept_code_change``. A stale one is trained again, so it provides nothing."""
    path = stage1_path(cfg)
    return path.exists() and made_by_other_code(_load_meta_only(path), cfg) is None


def _log_epoch(logger: RunLogger, res: dict, stage: int, epoch: int, global_epoch: int, lr: float,
               train_loss: float, seconds: float, row_w: list) -> None:
    """One CSV row per evaluated split; a non-finite loss stops the run."""
    for split_name, m in res.items():
        if not np.isfinite(m["loss"]):
            raise NonFiniteError(f"{split_name} loss is {m['loss']} at stage {stage} epoch {epoch}")
        extra = {"tau": m["tau"]} if "tau" in m else {}
        logger.log(_metric_row(m, stage, epoch, global_epoch, split_name, lr, train_loss, seconds, row_w, extra))


def _dynamic_stat(mode: str, st: RunState, held_out_stat):
    """The per-class statistic that the next stage-2 epoch's weights come from: the last epoch's
    training loss, or ``held_out_stat(mode)`` measured now, after it, in eval mode.
    None before any training epoch (``stage1_epochs=0``): no epoch has been seen yet."""
    if mode in ("none", "loss"):
        return st.train_class_loss
    return held_out_stat(mode) if st.step > 0 else None


def _measured_stat(model, norm, counts, cfg, images, mode: str) -> torch.Tensor:
    """The statistic measured in eval mode on ``images``: ``val_loss`` (per-class mean
    cross-entropy) or ``val_error`` (1 - per-class recall) on the statistic split (never the
    validation split, which selects), or ``train_eval_loss`` (per-class mean cross-entropy) on the
    training images without augmentation; NaN for a class the images lack, which the weights
    refuse rather than read as an easy or a hard class."""
    m = evaluate(model, *images, norm, counts, batch_size=cfg.eval_batch_size,
                 precision=cfg.precision, channels_last=cfg.channels_last)
    if mode in ("val_loss", "train_eval_loss"):
        return m["class_loss"]
    error = 1.0 - torch.as_tensor(m["recall"], dtype=torch.float64)
    return torch.where(torch.as_tensor(m["support"]) > 0, error, torch.nan)


def load_checkpoint(path: Path, device="cpu") -> dict:
    """A run's checkpoint or a shared stage 1; one error line naming the file if it cannot be read."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # truncated, corrupted, or not a checkpoint: torch raises many kinds
        why = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {why}); delete it, and the run "
                         f"trains what it held again") from e


def _load_meta_only(path: Path) -> dict:
    return {"code_fingerprint": load_checkpoint(path).get("code_fingerprint")}


def run_two_stage_ictta_on_scenario(model_name: str, imbalance_type: str, **settings) -> dict:
    """Run one two-stage configuration on one imbalance scenario; return its results.

    Every keyword is a field of :class:`TwoStageConfig` (the signature below lists them with their
    defaults); an unknown keyword raises ``TypeError``, an invalid value ``ValueError``.
    The returned dict holds, per stage, the final and best-by-validation metrics on val and test,
    the stage-2 minus stage-1 deltas on test, and the paths written.
    """
    return run_two_stage(TwoStageConfig(model_name, imbalance_type, **settings))


run_two_stage_ictta_on_scenario.__signature__ = inspect.signature(TwoStageConfig).replace(
    return_annotation=dict)


if __name__ == "__main__":
    sys.exit("two_stage_ictta.py is the library; from a shell run: python main.py --help")
