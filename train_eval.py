"""One training epoch, evaluation and metrics. The same code runs on CPU and CUDA."""
from __future__ import annotations

import contextlib
import math
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

import losses

PRECISIONS = ("bf16", "fp32")


class NonFiniteError(FloatingPointError):
    """Training produced a NaN or infinite loss or weight; the run cannot go on."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> ``cuda`` when available, else ``cpu``; anything else is validated."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device; use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use auto or cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}; valid: auto, cpu, cuda[:N]")
    return dev


def bf16_is_emulated(device: torch.device) -> bool:
    """True on a CPU whose oneDNN has no bf16 kernels: bf16 autocast then runs, but emulated, at a
    fraction of fp32's speed (10x slower per ResNet-10 step on an AVX2-only EPYC, docs/speed.md)."""
    if device.type != "cpu":
        return False
    try:
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # a torch without the probe: assume native
        return False


def precision_advice(device: torch.device, precision: str) -> str | None:
    """A one-line advice when ``precision`` would run emulated on ``device``, else None."""
    if precision == "bf16" and bf16_is_emulated(device):
        return ("bf16 autocast is emulated on this CPU (it has no native bf16) and runs several times slower "
                "than fp32: pass --precision fp32 (precision=\"fp32\")")
    return None


def autocast(device: torch.device, precision: str):
    """bf16 autocast on either device type, or a no-op context for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_one_epoch(model, batches, optimizer, loss_fn, lr_at, start_step: int, num_classes: int,
                    class_weights: torch.Tensor | None = None, precision: str = "fp32",
                    normalization: str = "mean", forward=None, mixup_alpha: float = 0.0,
                    mixup_generator: torch.Generator | None = None, sam_rho: float = 0.0,
                    max_norm: float | None = None, freeze_bn_stats: bool = False) -> dict:
    """Train over ``batches`` once, every module in train mode.

    ``loss_fn(logits, y, weight, reduction)`` is one of :mod:`losses`; each step minimises its
    weighted sum under ``class_weights`` (None: unweighted) divided by
    :func:`losses.loss_denominator` (``normalization``: ``"mean"`` divides by ``sum(w_y)``,
    ``"batch_mean"`` by the batch size). ``lr_at(step)`` gives the learning rate of global step
    ``step``, set before each step on every parameter group (times the group's ``"lr_scale"`` where
    it has one, as MiSLAS's stage 2 runs its classifier at half the rate). Train mode holds for a
    frozen backbone too (cRT): its BatchNorm statistics follow the batches, as in
    classifier-balancing's training loop; ``freeze_bn_stats=True`` keeps every BatchNorm layer in
    eval mode instead (normalised by, and not updating, its running statistics: MiSLAS's stage 2
    without shifted BN). ``forward`` replaces ``model`` for the forward pass (e.g. its
    ``torch.compile``d version).

    Options, each off by default (and then the step is the plain one above, bit for bit):

    * ``mixup_alpha > 0``: mixup (:func:`draw_mixup`, :func:`mix_images`, :func:`losses.mixup_loss`).
      ``lam`` and the permutation are drawn from ``mixup_generator`` (required then), once per
      batch after the batch is drawn; pass the batches' own generator (``DeviceBatches.generator``)
      and a checkpoint that saves it resumes the same draws.
    * ``sam_rho > 0``: sharpness-aware minimisation (:func:`sam_perturb_`), so two forward-backward
      passes per step: the gradient at ``w + e`` drives the optimizer step from ``w``. BatchNorm
      stays in train mode in both passes, so its running statistics are updated twice per step,
      as in Saddle-LongTail's training loop.
    * ``max_norm``: after the epoch's last step, :func:`losses.max_norm_` projects the rows of
      ``model.fc.weight`` onto the ball of that radius (once per epoch, as weight balancing's
      ``train_model`` applies its MaxNorm after each training epoch).

    Returns the mean objective, ``class_loss`` (the mean cross-entropy of each class's images: the
    hardness statistic of dynamic reweighting, independent of the weights and of gamma) and the
    number of steps. Raises :class:`NonFiniteError` if the objective was not finite. Under mixup
    the mean objective is the batch-size-weighted mean of the steps' objectives, and ``class_loss``
    of class c is ``sum(s_i * CE(z_i, c)) / sum(s_i)`` over the mixed images with a label c, ``s_i``
    that label's share (``lam`` for ``y_i``, ``1 - lam`` for ``y_perm(i)``); with SAM both come from
    the first pass, at ``w``.
    """
    if mixup_alpha and mixup_generator is None:
        raise ValueError("mixup_alpha > 0 needs a mixup_generator (the batches' generator)")
    _train_mode(model, freeze_bn_stats)
    compiled = forward is not None and forward is not model
    forward = model if forward is None else forward
    device = next(model.parameters()).device
    if class_weights is not None:
        class_weights = class_weights.to(device)
    loss_sum = torch.zeros((), device=device)
    weight_sum = torch.zeros((), device=device)
    class_ce = torch.zeros(num_classes, device=device)
    class_n = torch.zeros(num_classes, device=device)
    step = start_step
    for xb, yb in batches:
        if compiled:  # tells CUDA-graph trees a new step begins
            torch.compiler.cudagraph_mark_step_begin()
        _set_lr(optimizer, lr_at(step))
        mix = None
        if mixup_alpha:
            lam, perm = draw_mixup(len(yb), mixup_alpha, mixup_generator)
            mix = (lam, perm.to(yb.device, non_blocking=True))
            xb = mix_images(xb, *mix)
        objective = partial(_objective, forward, xb, yb, loss_fn, class_weights, normalization,
                            device, precision, mix)
        logits, loss, loss_total, w_total = objective()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # accumulated on the device: the only host sync is the .cpu() after the loop
        with torch.no_grad():
            loss_sum += loss_total.detach()
            weight_sum += w_total
            _add_class_ce(class_ce, class_n, logits.detach().float(), yb, mix)
        if sam_rho:
            _sam_gradient(optimizer, sam_rho, objective, compiled)
        optimizer.step()
        step += 1
    if max_norm is not None:
        losses.max_norm_(model.fc.weight, max_norm)
    loss_mean, class_ce, class_n = (loss_sum / weight_sum).item(), class_ce.cpu(), class_n.cpu()
    if not math.isfinite(loss_mean):
        raise NonFiniteError(f"training loss became {loss_mean} (steps {start_step}..{step}); "
                             "lower the learning rate or the weight range")
    # class_n is a count (a sum of mixup shares under mixup); > 0 where the class was seen
    class_loss = torch.where(class_n > 0, class_ce / torch.where(class_n > 0, class_n, 1.0), torch.nan)
    return {"loss": loss_mean, "class_loss": class_loss, "steps": step - start_step}


_BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _train_mode(model, freeze_bn_stats: bool) -> None:
    model.train()
    if freeze_bn_stats:
        for m in model.modules():
            if isinstance(m, _BATCHNORMS):
                m.eval()


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr


def _objective(forward, xb, yb, loss_fn, class_weights, normalization, device, precision, mix):
    """One forward pass: ``(logits, objective, its numerator, its denominator)``; the last two
    add up to the epoch's mean objective."""
    with autocast(device, precision):
        logits = forward(xb)
    if mix is None:
        loss_total = loss_fn(logits, yb, class_weights, "sum")
        w_total = losses.loss_denominator(yb, class_weights, normalization)
        return logits, loss_total / w_total, loss_total, w_total
    lam, perm = mix
    loss = losses.mixup_loss(loss_fn, logits, yb, yb[perm], lam, class_weights, normalization)
    n = float(len(yb))
    return logits, loss, loss * n, n


def _add_class_ce(class_ce, class_n, logits, yb, mix) -> None:
    """Add the batch's per-class cross-entropy sums and counts (mixup: shares; see train_one_epoch)."""
    ce = F.cross_entropy(logits, yb, reduction="none")
    if mix is None:
        class_ce.index_add_(0, yb, ce)
        class_n.index_add_(0, yb, torch.ones_like(ce))
        return
    lam, perm = mix
    y_b = yb[perm]
    ce_b = F.cross_entropy(logits, y_b, reduction="none")
    for y, c, share in ((yb, ce, lam), (y_b, ce_b, 1.0 - lam)):
        class_ce.index_add_(0, y, share * c)
        class_n.index_add_(0, y, torch.full_like(c, share))


def _sam_gradient(optimizer, rho: float, objective, compiled: bool) -> None:
    """Replace the gradients at ``w`` (already in ``.grad``) by those at ``w + e`` (SAM), then put
    the weights back to ``w`` exactly, so that ``optimizer.step()`` steps from ``w``."""
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    saved = sam_perturb_(params, rho)
    optimizer.zero_grad(set_to_none=True)
    if compiled:
        torch.compiler.cudagraph_mark_step_begin()
    objective()[1].backward()
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)


@torch.no_grad()
def sam_perturb_(params, rho: float) -> list[torch.Tensor]:
    """SAM's ascent step (Foret et al. 2021) in place: ``w <- w + e``, ``e = rho * g / (||g||_2 + 1e-12)``
    with ``g`` the parameters' ``.grad`` and ``||g||_2`` the norm over all of them together (as
    davda54/sam's ``first_step``, which Saddle-LongTail uses; plain SAM, not the adaptive variant).
    Returns copies of the weights before the step, to restore them exactly."""
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm(2) for p in params]))
    scale = rho / (grad_norm + 1e-12)
    saved = [p.detach().clone() for p in params]
    for p in params:
        p.add_(p.grad * scale.to(p))
    return saved


def draw_mixup(batch_size: int, alpha: float, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """``(lam, perm)`` for one mixup batch: ``lam ~ Beta(alpha, alpha)`` and ``perm`` a uniform
    random permutation of ``range(batch_size)`` (CPU), both from the CPU ``generator`` alone, so the
    same generator state gives the same draws. torch has no Beta sampler that takes a generator,
    so ``lam`` comes from a numpy Generator seeded by one 63-bit draw from ``generator``."""
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    return lam, torch.randperm(batch_size, generator=generator)


def mix_images(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """Mixup's inputs: ``x_mix = lam * x + (1 - lam) * x[perm]``."""
    return lam * x + (1.0 - lam) * x[perm]


@torch.no_grad()
def predict(model, x_uint8: torch.Tensor, normalizer, batch_size: int = 1024,
            precision: str = "fp32", channels_last: bool = False, features: bool = False) -> torch.Tensor:
    """Logits (or penultimate features) for uint8 NCHW images, in float32, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    fn = model.features if features else model
    outs = []
    for start in range(0, len(x_uint8), batch_size):
        xb = normalizer(x_uint8[start:start + batch_size])
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            outs.append(fn(xb).float())
    return torch.cat(outs)


def class_groups(train_counts) -> dict[str, np.ndarray]:
    """Class groups by training count: ``head``/``tail`` and ``many``/``medium``/``few``.

    Classes are ranked by count, largest first (ties: lower index first), and the ranks are cut
    into groups: ``head`` the first ``C - C // 2``, ``tail`` the last ``C // 2``; ``many``/``medium``/
    ``few`` the first ``k``, the middle ``C - 2k`` and the last ``k``, ``k = floor(0.3 * C + 0.5)``
    (3/4/3 on CIFAR-10, 30/40/30 on CIFAR-100).

    In ``many``/``medium``/``few`` ties never split: classes of equal count always share a group. A
    block of equal counts goes to the group that holds most of its ranks (on a tie, the group of its
    first rank), so these groups may grow, shrink or be empty: head_tail's 5 x 4900 and 5 x 49 give
    many = the five head classes, few = the five tail ones, medium = none (its accuracy is NaN).
    ``head``/``tail`` are the seed's halves of the ranking and always hold ``C - C // 2`` and
    ``C // 2`` classes; they split a tie only when the middle ranks share a count (a balanced set).
    """
    counts = np.asarray(train_counts)
    C = len(counts)
    k = int(0.3 * C + 0.5)
    order = np.argsort(-counts, kind="stable")
    halves = {"head": np.sort(order[:C - C // 2]), "tail": np.sort(order[C - C // 2:])}
    return {**halves, **_rank_groups(counts, {"many": k, "medium": C - 2 * k, "few": k})}


def _rank_groups(counts: np.ndarray, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Cut the count ranking into consecutive groups of ``sizes``, then move each block of equal
    counts whole into the group that holds most of its ranks (see :func:`class_groups`)."""
    order = np.argsort(-counts, kind="stable")
    rank_group = np.repeat(np.arange(len(sizes)), list(sizes.values()))
    members = [[] for _ in sizes]
    for value in np.unique(counts)[::-1]:  # blocks of equal count, largest first
        block = np.flatnonzero(counts[order] == value)
        groups, votes = np.unique(rank_group[block], return_counts=True)
        winner = groups[np.argmax(votes)]  # argmax keeps the first (earliest) group on a tie
        members[winner] += order[block].tolist()
    return {name: np.sort(np.asarray(m, dtype=np.int64)) for name, m in zip(sizes, members)}


def classification_metrics(y_true, y_pred, train_counts) -> dict:
    """Accuracy, macro-F1, head/tail macro-F1, many/medium/few accuracy (mean per-class recall of
    the group), per-class precision/recall/F1 and the confusion matrix (rows = true class)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    C = len(train_counts)
    labels = np.arange(C)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    groups = class_groups(train_counts)
    out = {"acc": float(accuracy_score(y_true, y_pred)), "macro_f1": float(f1.mean())}
    for name in ("tail", "head"):
        out[f"{name}_macro_f1"] = float(f1[groups[name]].mean())
    for name in ("many", "medium", "few"):
        idx = groups[name]
        out[f"{name}_acc"] = float(recall[idx].mean()) if len(idx) else float("nan")
    out.update(precision=precision, recall=recall, f1=f1, support=support,
               confusion=confusion_matrix(y_true, y_pred, labels=labels))
    return out


def expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, num_bins: int = 15) -> float:
    """Expected calibration error over ``num_bins`` equal-width confidence bins, as MiSLAS's
    ``calibration`` computes it: ``ECE = sum_b |acc_b - conf_b| * n_b / N``.

    The confidence of a row is its largest probability and its prediction that class; bin ``b``
    (1-based) holds the confidences in ``((b-1)/B, b/B]`` (``np.digitize(..., right=True)`` over
    ``np.linspace(0, 1, B+1)``; a confidence of exactly 0 falls in no bin and ``N`` counts the
    binned rows). ``acc_b`` and ``conf_b`` are the bin's accuracy and mean confidence. A fraction
    in [0, 1].
    """
    conf, pred = probs.max(dim=1)
    correct = (pred == y.to(pred.device)).double()
    edges = torch.from_numpy(np.linspace(0.0, 1.0, num_bins + 1)).to(conf.device)
    idx = torch.bucketize(conf.double(), edges, right=False)  # edges[i-1] < conf <= edges[i]
    binned = (idx > 0) & (idx <= num_bins)
    idx, correct, conf = idx[binned] - 1, correct[binned], conf.double()[binned]
    n = torch.zeros(num_bins, dtype=torch.float64, device=conf.device).index_add_(0, idx, torch.ones_like(conf))
    hits = torch.zeros_like(n).index_add_(0, idx, correct)
    conf_sum = torch.zeros_like(n).index_add_(0, idx, conf)
    # n_b * |acc_b - conf_b| = |hits_b - conf_sum_b|
    return float((hits - conf_sum).abs().sum() / n.sum())


def evaluate(model, x_uint8, y, normalizer, train_counts, batch_size: int = 1024,
             precision: str = "fp32", channels_last: bool = False, logits: torch.Tensor | None = None) -> dict:
    """Loss (mean cross-entropy), :func:`classification_metrics`, ``class_loss`` (each class's
    mean cross-entropy; NaN for a class the split lacks, as :func:`train_one_epoch` gives) and
    ``ece`` (:func:`expected_calibration_error` of the softmax, 15 bins) on one split.

    ``logits`` may be passed in when they were computed already (e.g. by a post-hoc adjustment).
    """
    if logits is None:
        logits = predict(model, x_uint8, normalizer, batch_size, precision, channels_last)
    logits = logits.detach()  # logits passed in may carry a graph: evaluation needs none
    y_dev = y.to(logits.device)
    loss = F.cross_entropy(logits, y_dev).item()
    pred = logits.argmax(1).cpu().numpy()
    out = classification_metrics(y.cpu().numpy(), pred, train_counts)
    out["loss"] = loss
    per_class_ce = torch.zeros(len(train_counts), device=logits.device).index_add_(
        0, y_dev, F.cross_entropy(logits, y_dev, reduction="none"))
    n = torch.bincount(y_dev, minlength=len(train_counts))
    out["class_loss"] = torch.where(n > 0, per_class_ce / n.clamp_min(1), torch.nan).cpu()  # as in training
    out["ece"] = expected_calibration_error(torch.softmax(logits.float(), dim=1), y_dev)
    return out
