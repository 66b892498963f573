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
import saved_model  # noqa: E402
import train_eval  # noqa: E402


def confidence_report(path: str) -> str:
    t = saved_model.logits_on_test(path, device="cpu")
    logits, y = t["logits"].float(), t["y"]
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    span = (logits.max(1).values - logits.min(1).values).mean()
    rows = t["model"].fc.weight.detach().norm(dim=1)
    report = (f"{Path(path).name}: test accuracy {(predicted == y).float().mean():.4f}, mean confidence "
              f"{confidence.mean():.4f}, mean logit span {span:.3f}, classifier row norms "
              f"{rows.min():.3f} to {rows.max():.3f}, ECE {train_eval.expected_calibration_error(probs, y):.4f}")
    if t["record"]["normed_classifier"]:  # a cosine classifier: the loss scales its scores
        scale = t["record"]["config"]["ldam_scale"]
        scaled = (scale * logits).softmax(1)
        report += (f"; scores x {scale:g}: mean confidence {scaled.max(1).values.mean():.4f}, "
                   f"ECE {train_eval.expected_calibration_error(scaled, y):.4f}")
    return report


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: confidence.py MODEL.model.pt [MODEL.model.pt ...]")
    if missing := [f for f in sys.argv[1:] if not Path(f).is_file()]:
        sys.exit(f"confidence.py: no model file {', '.join(missing)}; a finished run writes results_*.model.pt")
    for model_file in sys.argv[1:]:
        print(confidence_report(model_file))
