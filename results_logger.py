"""Crash-safe result files: one CSV per run (a row per epoch and split) and its config as JSON.

Every file is written whole to a temporary name in the same folder and then renamed over the
target (``os.replace`` is atomic on POSIX), so a reader or a crash sees the old file or the new one,
never half of one.
"""
from __future__ import annotations

import ast
import csv
import functools
import hashlib
import io
import json
import os
import platform
import secrets
import socket
import subprocess
import time
import tokenize
from pathlib import Path

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # local time of every "started" / "finished" / "failed" record


def now() -> str:
    """The local time, as every run and grid record writes it (:data:`TIME_FORMAT`)."""
    return time.strftime(TIME_FORMAT)


def writer_tag() -> str:
    """``<host>-<pid>`` of this process, as it stands in the names of its temporary files."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``.<name>.<host>-<pid>.<random>.tmp`` beside ``path``, then rename it over
    ``path``: readers see the old file or the new one, never half of one. The file gets the mode
    of any new file of this process (0666 less the umask: 0644 under umask 022), not mkstemp's 0600."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, exclusive temporary file beside ``path``, opened for writing with mode 0666: the
    kernel applies the umask, as for any file the user creates."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{writer_tag()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path) -> None:
    import torch  # here, not at the top: the analysis scripts read result files without torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text with the union of the rows' keys as columns, in first-seen order."""
    fields: dict[str, None] = {}
    for r in rows:
        fields.update(dict.fromkeys(r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def git_commit() -> str | None:
    """The project's current commit (with ``-dirty`` if the tree has changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) or None


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo, else lscpu, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in text.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


# The modules whose code computes a run's numbers. Their fingerprint is part of a result's
# identity: a result made by other code is never skipped as finished, resumed, or shared as a
# stage 1, unless the run says accept_code_change.
NUMERIC_MODULES = ("data_loader", "model", "losses", "train_eval", "methods", "config", "two_stage_ictta")
HERE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def code_fingerprint(folder: str = str(HERE)) -> str:
    """A hash of the numeric modules' code (:data:`NUMERIC_MODULES` in ``folder``): their source
    with comments, docstrings, blank lines and trailing spaces removed. Any other edit changes it.
    It reads the files only (no import), and the same source gives the same fingerprint under every
    Python version: it hashes text, not a syntax tree, whose form changes between versions."""
    h = hashlib.sha1()
    for name in NUMERIC_MODULES:
        h.update(f"{name}\n{code_only((Path(folder) / f'{name}.py').read_text(encoding='utf-8'))}\n".encode())
    return h.hexdigest()[:12]


def code_only(source: str) -> str:
    """``source`` without its comments, docstrings, blank lines and trailing spaces."""
    lines = source.splitlines()
    spans = [(t.start, t.end) for t in tokenize.generate_tokens(io.StringIO(source).readline)
             if t.type == tokenize.COMMENT]
    spans += [_char_span(lines, node) for node in _docstrings(ast.parse(source))]
    for (r0, c0), (r1, c1) in sorted(spans, reverse=True):  # bottom up: earlier positions stay valid
        head, tail = lines[r0 - 1][:c0], lines[r1 - 1][c1:]
        lines[r0 - 1:r1] = [head + " " * bool(head.strip() and tail.strip()) + tail]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def _docstrings(tree: ast.AST) -> list[ast.Expr]:
    """The docstring statements of the module, its classes and functions."""
    return [node.body[0] for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)]


def _char_span(lines: list[str], node: ast.AST) -> tuple[tuple[int, int], tuple[int, int]]:
    """A node's (line, column) start and end in characters (the syntax tree counts UTF-8 bytes)."""
    def col(row: int, byte_col: int) -> int:
        return len(lines[row - 1].encode("utf-8")[:byte_col].decode("utf-8"))
    return (node.lineno, col(node.lineno, node.col_offset)), (node.end_lineno, col(node.end_lineno, node.end_col_offset))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # numpy arrays and scalars, tensors
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically; the missing folders of ``path`` are made."""
    Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=True) + "\n")


def read_json(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class RunLogger:
    """Collects a run's rows and rewrites its CSV atomically after each epoch.

    ``identity`` holds the columns that every row carries (model, method, scenario, seed and every
    swept hyperparameter), placed first; ``log`` appends metric rows, and hands each to ``mirror``
    (anything with a ``log(row)``, e.g. live curves) when there is one.
    """

    def __init__(self, csv_path, identity: dict, rows: list[dict] | None = None, mirror=None):
        self.csv_path = Path(csv_path)
        self.identity = dict(identity)
        self.rows: list[dict] = list(rows or [])
        self.mirror = mirror

    def log(self, row: dict) -> None:
        self.rows.append(dict(row))
        if self.mirror is not None:
            self.mirror.log(row)

    def full_rows(self) -> list[dict]:
        return [{**self.identity, **r} for r in self.rows]

    def flush(self) -> None:
        """Write the rows so far; before the first there is no CSV, never an empty one that readers choke on."""
        if self.rows:
            atomic_write_text(self.csv_path, rows_to_csv(self.full_rows()))


COMMAND_ENV = "TWO_STAGE_COMMAND"  # the command line that launched a run, set by the launchers' jobs


def run_command() -> str:
    """The command that made this run: the launcher's, when a launcher job runs it (its own
    command line is submitit's), else this process's."""
    import shlex
    import sys
    return os.environ.get(COMMAND_ENV) or shlex.join(getattr(sys, "orig_argv", None) or sys.argv)


SCALAR_METRICS = ("loss", "acc", "macro_f1", "tail_macro_f1", "head_macro_f1", "many_acc",
                  "medium_acc", "few_acc", "ece")  # what every CSV row holds of an evaluated split


def summarize_rows(rows) -> dict:
    """Per stage: the ``final`` epoch's val/test metrics and the ``best`` epoch by validation
    macro-F1 (its val and test metrics), plus stage-2 minus stage-1 ``delta`` on test; and
    ``peak``: the test metrics at the evaluated epoch of highest test accuracy, over both stages
    (its ``global_epoch`` and ``stage``, first maximum), and how many epochs test was ``evaluated`` at. ``peak`` is
    the protocol of most reference implementations (the best test accuracy over training): it is
    chosen on test, so it is reported beside the other two, never used to choose.

    ``rows`` is a list of row dicts or a DataFrame of one run's CSV. Without validation rows the
    best epoch is the last one (``selected_on: "last"``): nothing is chosen on the test set.
    """
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    out: dict = {}
    pick = lambda frame: {k: float(frame[k]) for k in SCALAR_METRICS if k in frame}
    for stage in (1, 2):
        d = df[df["stage"] == stage] if len(df) else df
        if not len(d):
            continue
        last_epoch = int(d["epoch"].max())
        final = {split: pick(r) for split, r in d[d["epoch"] == last_epoch].set_index("split").iterrows()}
        val = d[d["split"] == "val"]
        if len(val):
            best_epoch = int(val.loc[val["macro_f1"].idxmax(), "epoch"])  # first maximum
            selected_on = "val"
        else:
            best_epoch, selected_on = last_epoch, "last"
        best = {split: pick(r) for split, r in d[d["epoch"] == best_epoch].set_index("split").iterrows()}
        out[f"stage{stage}"] = {"final": final, "best": {"epoch": best_epoch, "selected_on": selected_on, **best}}
    test = df[df["split"] == "test"] if len(df) else df
    if len(test) and "acc" in test:
        peak = test.loc[test["acc"].idxmax()]
        out["peak"] = {"global_epoch": int(peak.get("global_epoch", peak["epoch"])), "stage": int(peak["stage"]),
                       "evaluated": len(test), "test": pick(peak)}
    if "stage1" in out and "stage2" in out:
        out["delta"] = {f"{kind}_test_{k}": out["stage2"][kind]["test"][k] - out["stage1"][kind]["test"][k]
                        for kind in ("final", "best") for k in ("acc", "macro_f1", "tail_macro_f1")}
    return out
