"""A finished run's model, kept beside its CSV as ``<run name>.model.pt``, and evaluated again from it.

The file is a plain dict, loadable with ``torch.load(path, weights_only=True)``:

* ``state_dict``: the model's weights and BatchNorm statistics at the run's last epoch (on the CPU);
* ``model_name``, ``num_classes``, ``normed_classifier`` (LDAM's cosine classifier) and
  ``normed_init``: what :func:`model.get_model` needs to rebuild it;
* ``mean``, ``std``: the normalisation constants the run used, per channel, in [0, 1] units;
* ``class_counts``, ``classes``: the training count and name of each class (many/medium/few and
  head/tail groups come from the counts);
* ``tau``: for ``tau_norm``, the tau chosen on validation at the last epoch (the classifier is then
  scaled by it, bias-free, at evaluation), else None;
* ``config`` (the run's settings, ``dataclasses.asdict``), ``run_id``, ``code_fingerprint``,
  ``git_commit``: where it came from.

A ResNet-32 file is about 2 MB. :func:`evaluate_file` rebuilds the model and reports
:func:`train_eval.evaluate`'s metrics on the test split; ``python main.py --evaluate PATH`` prints them.
"""
from __future__ import annotations

import dataclasses

import torch

import data_loader
import losses
from model import NormedLinear, get_model
from results_logger import atomic_torch_save, git_commit
from train_eval import evaluate, predict, resolve_device


def save(path, model: torch.nn.Module, cfg, data, counts, rows: list[dict], run_id: str,
         code_fingerprint: str) -> None:
    """Write the model file of a finished run (see the module docstring); ``rows`` are the run's
    metric rows, where ``tau_norm`` logged its tau."""
    record = {
        "state_dict": plain_state_dict(model),
        "model_name": cfg.model_name.lower(), "num_classes": data.num_classes,
        "normed_classifier": isinstance(model.fc, NormedLinear), "normed_init": cfg.normed_init,
        "mean": list(data.mean), "std": list(data.std), "class_counts": list(counts), "classes": list(data.classes),
        "tau": next((r["tau"] for r in reversed(rows) if "tau" in r), None),
        "config": dataclasses.asdict(cfg), "run_id": run_id, "code_fingerprint": code_fingerprint,
        "git_commit": git_commit(),
    }
    atomic_torch_save(record, path)


def plain_state_dict(model: torch.nn.Module) -> dict:
    """The model's weights on the CPU, in the shape :func:`model.get_model` builds: MiSLAS's logit
    scale (``fc`` = ``Sequential(Linear, LogitScale)``) folded into the classifier, as
    ``s_c (w_c . f + b_c) = (s_c w_c) . f + s_c b_c``."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if "fc.1.scale" in state:
        scale = state.pop("fc.1.scale")
        state["fc.weight"] = state.pop("fc.0.weight") * scale[:, None]
        state["fc.bias"] = state.pop("fc.0.bias") * scale
    return state


def load(path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The model of a model file, rebuilt on ``device`` in eval mode, and the file's record."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    model = get_model(record["model_name"], record["num_classes"], normed_classifier=record["normed_classifier"],
                      normed_init=record["normed_init"])
    model.load_state_dict(record["state_dict"])
    model = model.to(resolve_device(device)).eval()
    if record["config"].get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    return model, record


def logits_on_test(path, data_root=None, device="auto", batch_size: int | None = None) -> dict:
    """The logits of a saved model on the test split of ``data_root`` (default: the run's own data),
    re-encoded at the run's ``jpeg_quality`` if it had one, in the run's precision and evaluation
    batch size (tau_norm: its bias-free classifier scaled by ``1 / ||w_c||^tau``). Returns
    ``logits``, ``y``, the rebuilt ``model``, the file's ``record`` and the ``data`` it read."""
    model, record = load(path, device)
    cfg = record["config"]
    data = data_loader.load_dataset(data_root if data_root is not None else cfg["data_root"],
                                    dataset=cfg.get("dataset", data_loader.DEFAULT_DATASET))
    if data.num_classes != record["num_classes"]:
        raise data_loader.DataError(f"{path} is a {record['num_classes']}-class model; data_root="
                                    f"{data.source!r} holds {data.num_classes} classes")
    dev = next(model.parameters()).device
    norm = data_loader.Normalizer(record["mean"], record["std"], dev)
    test_x = data.test_x
    if cfg.get("jpeg_quality") is not None:  # as prepare_data did for the run
        test_x = data_loader.recompress_jpeg(test_x, cfg["jpeg_quality"])
    x, y = data_loader.to_device_images(test_x, dev), torch.from_numpy(data.test_y).to(dev)
    settings = dict(batch_size=batch_size or cfg["eval_batch_size"], precision=cfg["precision"],
                    channels_last=cfg["channels_last"])
    if record["tau"] is not None:
        feats = predict(model, x, norm, features=True, **settings)
        logits = losses.tau_norm_logits(feats, model.fc.weight.float(), record["tau"])
    else:
        logits = predict(model, x, norm, **settings)
    return {"logits": logits, "y": y, "model": model, "record": record, "data": data}


def evaluate_file(path, data_root=None, device="auto", batch_size: int | None = None) -> dict:
    """Test metrics of a saved model (:func:`train_eval.evaluate`: accuracy, macro-F1, head/tail,
    many/medium/few, per class, the confusion matrix) from its :func:`logits_on_test`."""
    t = logits_on_test(path, data_root, device, batch_size)
    record = t["record"]
    metrics = evaluate(t["model"], None, t["y"], None, record["class_counts"], logits=t["logits"])
    return {"model_file": str(path), "data_source": t["data"].source, "n_test": len(t["y"]), "tau": record["tau"],
            "classes": record["classes"], "class_counts": record["class_counts"], "config": record["config"],
            "test": metrics}


def format_evaluation(result: dict, max_matrix_classes: int = 20) -> str:
    """Test metrics in %, per-class recall and F1, and the confusion matrix (rows: true class) when
    there are at most ``max_matrix_classes`` classes."""
    cfg, m = result["config"], result["test"]
    lines = [f"{result['model_file']}: {cfg['model_name']} {cfg.get('exp_name') or cfg['method']} "
             f"{cfg['imbalance_type']}@{cfg['imb_factor']:g} seed {cfg['seed']}; test split of {result['data_source']} "
             f"({result['n_test']} images)",
             "  ".join(f"{k} {100 * m[k]:.2f}" for k in ("acc", "macro_f1", "tail_macro_f1", "head_macro_f1",
                                                          "many_acc", "medium_acc", "few_acc"))]
    names = [str(c)[:12] for c in result["classes"]]
    lines.append(f"{'class':<13}{'train n':>8}{'recall':>8}{'F1':>8}")
    lines += [f"{name:<13}{n:>8}{100 * r:>8.2f}{100 * f:>8.2f}"
              for name, n, r, f in zip(names, result["class_counts"], m["recall"], m["f1"])]
    if len(names) > max_matrix_classes:
        lines.append(f"confusion matrix: {len(names)} x {len(names)}, in the --json output")
        return "\n".join(lines)
    lines.append("confusion matrix (rows: true class, columns: predicted class)")
    lines.append(" " * 13 + "".join(f"{i:>6}" for i in range(len(names))))
    lines += [f"{i:>2} {name:<10}" + "".join(f"{v:>6}" for v in row) for i, (name, row) in enumerate(zip(names, m["confusion"]))]
    return "\n".join(lines)
