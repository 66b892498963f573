"""Accuracy against confidence of saved models on the test split: what an ECE is made of.

    python benchmarks/literature_cpu_2026-12-04/confidence.py MODEL.model.pt [MODEL.model.pt ...]

Prints, per model file: test accuracy, the mean softmax confidence (the largest probability),
the mean logit span (largest minus smallest logit), the norms of the classifier's rows, and the ECE
(15 bins) of that softmax, as the run recorded it. A model far less confident than it is accurate
is underconfident; its ECE says how far, not which way. For a cosine classifier (LDAM's), whose
scores lie in [-1, 1] and whose loss multiplies them by ``ldam_scale`` (30), it also prints the
confidence and ECE of the softmax of the scaled scores, the probabilities the loss trained.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import model  # noqa: E402
import saved_model  # noqa: E402
import train_eval  # noqa: E402


def confidence_report(path: str) -> str:
    t = saved_model.logits_on_test(path, device="cpu")
    logits, y = t["logits"].float(), t["y"]
    confidence, predicted = logits.softmax(1).max(1)
    span = (logits.max(1).values - logits.min(1).values).mean()
    rows = t["model"].fc.weight.detach().norm(dim=1)
    report = (f"{Path(path).name}: test accuracy {(predicted == y).float().mean():.4f}, mean confidence "
              f"{confidence.mean():.4f}, mean logit span {span:.3f}, classifier row norms "
              f"{rows.min():.3f} to {rows.max():.3f}, ECE {ece_of(logits, y):.4f}")
    if isinstance(t["model"].fc, model.NormedLinear):
        scale = t["record"]["config"]["ldam_scale"]
        scaled = (scale * logits).softmax(1).max(1).values.mean()
        report += f"; scores x {scale:g}: mean confidence {scaled:.4f}, ECE {ece_of(scale * logits, y):.4f}"
    return report


def ece_of(logits, y) -> float:
    return train_eval.expected_calibration_error(logits.softmax(1), y)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: confidence.py MODEL.model.pt [MODEL.model.pt ...]")
    if missing := [f for f in sys.argv[1:] if not Path(f).is_file()]:
        sys.exit(f"confidence.py: no model file {', '.join(missing)}; a finished run writes results_*.model.pt")
    for model_file in sys.argv[1:]:
        print(confidence_report(model_file))
