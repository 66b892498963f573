"""The layers point one way: no module imports one that imports it, and reading results needs no
training code."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("torch", "data_loader", "model", "losses", "train_eval", "methods", "config", "two_stage_ictta",
            "launch", "run_all_models")


def project_imports() -> dict[str, set[str]]:
    """Each top-level module's imports of other top-level modules, wherever in the file they are."""
    names = {p.stem for p in ROOT.glob("*.py")}
    graph = {}
    for name in names:
        tree = ast.parse((ROOT / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        graph[name] = found & names - {name}
    return graph


def test_the_modules_import_graph_has_no_cycle():
    graph, state = project_imports(), {}

    def visit(node, path):
        if state.get(node) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path + [node]))
        if state.get(node) is None:
            state[node] = "open"
            for nxt in sorted(graph[node]):
                visit(nxt, path + [node])
            state[node] = "done"

    for node in sorted(graph):
        visit(node, [])


def test_reading_results_imports_no_training_code():
    code = f"import sys, summary_tuning, plots; print([m for m in {TRAINING!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
