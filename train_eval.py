"""One training epoch, evaluation and metrics. The same code runs on CPU and CUDA."""
from __future__ import annotations

import contextlib
import math

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


def autocast(device: torch.device, precision: str):
    """bf16 autocast on either device type, or a no-op context for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def train_one_epoch(model, batches, optimizer, loss_fn, lr_at, start_step: int, num_classes: int,
                    class_weights: torch.Tensor | None = None, precision: str = "fp32",
                    normalization: str = "mean", forward=None) -> dict:
    """Train over ``batches`` once, every module in train mode.

    ``loss_fn(logits, y, weight, reduction)`` is one of :mod:`losses`; each step minimises its
    weighted sum under ``class_weights`` (None: unweighted) divided by
    :func:`losses.loss_denominator` (``normalization``: ``"mean"`` divides by ``sum(w_y)``,
    ``"batch_mean"`` by the batch size). ``lr_at(step)`` gives the learning rate of global step
    ``step``, set before each step. Train mode holds for a frozen backbone too (cRT): its BatchNorm
    statistics follow the batches, as in classifier-balancing's training loop. ``forward``
    replaces ``model`` for the forward pass (e.g. its ``torch.compile``d version).

    Returns the mean objective, ``class_loss`` (the mean cross-entropy of each class's images: the
    hardness statistic of dynamic reweighting, independent of the weights and of gamma) and the
    number of steps. Raises :class:`NonFiniteError` if the objective was not finite.
    """
    model.train()
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
        if forward is not model:  # a compiled forward: tells CUDA-graph trees a new step begins
            torch.compiler.cudagraph_mark_step_begin()
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, precision):
            logits = forward(xb)
        loss_total = loss_fn(logits, yb, class_weights, "sum")
        w_total = losses.loss_denominator(yb, class_weights, normalization)
        loss = loss_total / w_total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # accumulated on the device: the only host sync is the .cpu() after the loop
        with torch.no_grad():
            loss_sum += loss_total.detach()
            weight_sum += w_total
            ce = F.cross_entropy(logits.detach().float(), yb, reduction="none")
            class_ce.index_add_(0, yb, ce)
            class_n.index_add_(0, yb, torch.ones_like(ce))
        step += 1
    loss_mean, class_ce, class_n = (loss_sum / weight_sum).item(), class_ce.cpu(), class_n.cpu()
    if not math.isfinite(loss_mean):
        raise NonFiniteError(f"training loss became {loss_mean} (steps {start_step}..{step}); "
                             "lower the learning rate or the weight range")
    class_loss = torch.where(class_n > 0, class_ce / class_n.clamp_min(1), torch.nan)
    return {"loss": loss_mean, "class_loss": class_loss, "steps": step - start_step}


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


def evaluate(model, x_uint8, y, normalizer, train_counts, batch_size: int = 1024,
             precision: str = "fp32", channels_last: bool = False, logits: torch.Tensor | None = None) -> dict:
    """Loss (mean cross-entropy), :func:`classification_metrics` and ``class_loss`` (each class's
    mean cross-entropy; NaN for a class the split lacks, as :func:`train_one_epoch` gives) on one split.

    ``logits`` may be passed in when they were computed already (e.g. by a post-hoc adjustment).
    """
    if logits is None:
        logits = predict(model, x_uint8, normalizer, batch_size, precision, channels_last)
    y_dev = y.to(logits.device)
    loss = F.cross_entropy(logits, y_dev).item()
    pred = logits.argmax(1).cpu().numpy()
    out = classification_metrics(y.cpu().numpy(), pred, train_counts)
    out["loss"] = loss
    per_class_ce = torch.zeros(len(train_counts), device=logits.device).index_add_(
        0, y_dev, F.cross_entropy(logits, y_dev, reduction="none"))
    n = torch.bincount(y_dev, minlength=len(train_counts))
    out["class_loss"] = torch.where(n > 0, per_class_ce / n.clamp_min(1), torch.nan).cpu()  # as in training
    return out
