"""Tables from the per-run result CSVs: one row per run, mean ± std and a 95% interval per
configuration over seeds, paired differences (two-stage vs its control, stage 2 vs stage 1, tuning
points and ablation variants vs the default run), the best two-stage configuration chosen on
validation, and the methods' comparison table.

Reads the ``results_*.csv`` files under ``--results`` (recursively) and, from the JSON beside each
(the run's record), only what the CSV does not hold: the training count and name of each class
(``class_counts``, ``classes``). It imports no training code (nor torch): what it knows about a
method, model or scenario comes from the run files, so it works on a grid that is still running,
on any machine that has pandas. A run whose CSV does not reach its last epoch yet is listed in
``summary_tuning.csv`` (``complete=False``) but left out of every mean.

Intervals are 95% Student-t intervals over seeds, ``mean ± t_{0.975, n-1} * std / sqrt(n)``
(:func:`interval95`); with one seed there is none, and the text says "n=1, no interval".

Writes, in ``--out`` (default: the results folder):

* ``summary_tuning.csv``: one row per run: tag, model, scenario, method, exp_name, ``variant``
  (``two_stage``, ``control``, the tuning point's label, the ablation's exp_name, or the method),
  ``role``, every hyperparameter, the seed, and per stage (``s1_``/``s2_``) the ``final`` (last
  epoch) and ``best`` (epoch of maximal validation macro-F1) metrics on ``val`` and ``test``, e.g.
  ``s2_best_test_macro_f1``; and the stage-2 minus stage-1 ``delta_<final|best>_<split>_<metric>``.
  Metrics are fractions in [0, 1].
* ``summary_tuning_agg.csv``: one row per configuration (all settings but the seed): ``n_seeds``,
  ``seeds`` and ``<metric>_mean`` / ``_std`` (sample std, ddof=1) / ``_ci95`` (the interval's
  half-width); std and ci95 are empty for one seed.
* ``best_configs.csv``: per (profile, model, scenario, imb_factor), the two-stage configuration
  (the baseline-suite default and the tuning points, never the control) with the highest
  **validation** macro-F1 (stage 2's best-by-validation epoch, mean over seeds), and its **test**
  numbers with std and ci95. The test set never takes part in the choice.
* ``compare_table.csv`` / ``compare_table.md``: for the compare suite, rows = methods, columns =
  test accuracy, macro-F1, tail macro-F1, many/medium/few accuracy in %, mean ± std [95% interval]
  over seeds, per (tag, model, scenario, imb_factor); at stage 2's last epoch (as the literature
  reports) and at its best-by-validation epoch. Methods are ranked by mean test macro-F1 at stage
  2's last epoch, best first, in both selections (:func:`compare_table`).
* ``paired_differences.csv`` / ``.md``: every paired comparison of :data:`COMPARISONS`, per
  (profile, model, scenario, imb_factor), in percentage points at stage 2's last epoch, on test and
  validation macro-F1 and tail macro-F1: n, mean, std, 95% interval, seeds won (and tied), and the
  runs left without a partner. Partners have the same seed **and** the same ``stage1_id`` (the
  shared stage-1 checkpoint) with the same stage-1 results (two runs of one ``stage1_id`` that
  trained it apart, e.g. on two machines, are listed as unpaired), but for a named variant against
  its method (the same seed only);
  stage 2 vs stage 1 compares the two stages of one run. One row per pair of configurations
  (``treated_config``, ``reference_config``, and ``differs``: the settings in which they differ),
  so that runs of one cell on two machines are never pooled.
* ``ablation_table.csv`` / ``.md``: per ablation variant (exp_name ``abl-...``), its val and test
  macro-F1 and tail macro-F1 (mean ± std [interval]), its paired differences vs the default
  two-stage run and vs ``drw``, and whether it closes the gap to drw (``closes_gap``, computed by
  :func:`gap_verdict`: chosen on validation, checked on test).

``python summary_tuning.py --results results --out results``. As a library: ``load_rows``,
``summarize_runs``, ``aggregate_seeds``, ``interval95``, ``pair_runs``, ``paired_table``,
``ablation_table``, ``best_configs``, ``compare_table``, ``write_summary``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import cli
from results_logger import SCALAR_METRICS, atomic_write_text, summarize_rows

RUN_GLOB = "results_*.csv"
SUITES = ("baseline", "tuning", "compare", "ablation")
PROFILE_ORDER = ("literature", "full", "reduced", "quick", "smoke")  # most trusted first
# columns that change from row to row; everything else in a run's CSV is its identity
ROW_COLUMNS = frozenset(("stage", "epoch", "global_epoch", "split", "lr", "train_loss", "seconds", "tau",
                         *SCALAR_METRICS))
PER_CLASS = re.compile(r"^(f1|acc|w)_(\d+)$")
NOT_CONFIG = ("run_id", "stage1_id", "seed")  # the configuration is the identity less these
# the stage-2 knobs that the tuning grid sweeps (run_all_models.TUNING_GRID), for labels
TUNED = ("stage2_lr", "min_weight", "max_weight", "stage2_focal_gamma", "dynamic_mode", "stage2_loss_type")
COMPARE_METRICS = (("acc", "test acc"), ("macro_f1", "macro-F1"), ("tail_macro_f1", "tail macro-F1"),
                   ("many_acc", "many acc"), ("medium_acc", "medium acc"), ("few_acc", "few acc"),
                   ("ece", "ECE"))
LOWER_IS_BETTER = {"ece"}  # expected calibration error (15 bins); the others: higher is better
ABLATION_PREFIX = "abl-"  # exp_name of an ablation variant of the two-stage method
RECORDED = ("class_counts", "classes", "setting_defaults")  # read from each run's JSON; one JSON text per row


# ----------------------------------------------------------------------------------------------
# Reading

def find_run_files(results_dir) -> list[Path]:
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {str(root)!r} " + ("is a file" if root.exists() else "does not exist"))
    return sorted(p for p in root.rglob(RUN_GLOB) if p.is_file())


def read_run_csv(path) -> pd.DataFrame:
    """One run's CSV; ids read as text (a hex id like ``2175e3579465`` is not the float inf), and an
    empty ``tag`` reads as "" (not NaN)."""
    df = pd.read_csv(path, dtype={"run_id": str, "stage1_id": str, "tag": str})
    if "tag" in df:
        df["tag"] = ["" if pd.isna(v) else str(v) for v in df["tag"]]
    return df


def malformed_lines(path: Path, df: pd.DataFrame) -> list[int]:
    """The line numbers (the header is line 1) of ``path``'s rows (``df``) that no run writes: fewer
    or more fields than the header (a file cut short), stage, epoch, loss or macro_f1 missing, or a
    scalar metric that is text (an edited file)."""
    with open(path, newline="") as f:
        widths = [len(fields) for fields in csv.reader(f) if fields]
    ragged = [i + 1 for i, n in enumerate(widths) if n != widths[0]]
    metrics = df[[c for c in SCALAR_METRICS if c in df]]
    as_numbers = metrics.apply(pd.to_numeric, errors="coerce")
    text = as_numbers.isna() & metrics.notna()
    required = df[["stage", "epoch"] + [c for c in ("loss", "macro_f1") if c in df]]
    required = required.apply(pd.to_numeric, errors="coerce")
    bad = text.any(axis=1) | required.isna().any(axis=1)
    return sorted(set(ragged) | {int(i) + 2 for i in np.flatnonzero(bad.to_numpy())})


def load_rows(results_dir, notes: list | None = None) -> pd.DataFrame:
    """Every row of every ``results_*.csv`` under ``results_dir``, with a ``source`` column (the
    file, relative to ``results_dir``). A run found twice (same run_id and tag, e.g. a copied
    folder) is kept once: the copy with more rows. Raises ``FileNotFoundError`` if there is none."""
    notes = notes if notes is not None else []
    files = find_run_files(results_dir)
    if not files:
        raise FileNotFoundError(f"no {RUN_GLOB} under {str(results_dir)!r}: run run_all_models.py or main.py first")
    frames = {}
    for path in files:
        try:
            df = read_run_csv(path)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
            notes.append(f"skipped {path}: unreadable ({type(e).__name__})")
            continue
        missing = {"run_id", "model", "scenario", "method", "seed", "stage", "epoch", "split"} - set(df)
        if missing or not len(df):
            notes.append(f"skipped {path}: " + (f"no columns {sorted(missing)}" if missing else "no rows"))
            continue
        bad = malformed_lines(path, df)
        if bad:
            notes.append(f"skipped {path}: line(s) {', '.join(map(str, bad[:5]))} have another number of fields than "
                         f"the header, no number where stage, epoch, loss or macro_f1 must be one, or text in a "
                         f"metric (a file cut short or edited)")
            continue
        key = (str(df["run_id"].iloc[0]), df["tag"].iloc[0] if "tag" in df else "")
        if key in frames:
            other, other_path = frames[key]
            notes.append(f"run {key[0]} (tag {key[1]!r}) found twice: kept the longer of {other_path} and {path}")
            if len(df) <= len(other):
                continue
        frames[key] = (df, path)
    if not frames:
        raise FileNotFoundError(f"no readable {RUN_GLOB} under {str(results_dir)!r} ({'; '.join(notes[:3])})")
    root = Path(results_dir)
    out = []
    for df, path in frames.values():
        df = df.copy()
        df["source"] = str(path.relative_to(root))
        recorded = recorded_in_json(path)
        for k in RECORDED:
            df[k] = json.dumps(recorded[k]) if recorded.get(k) else ""
        out.append(df)
    rows = pd.concat(out, ignore_index=True, sort=False)
    if "tag" not in rows:
        rows["tag"] = ""
    return rows


def _plain(v):
    """A CSV cell as a plain Python value, so that 300, 300.0 and "300" hash alike."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if float(v).is_integer() else float(v)
    return str(v)


def identity_columns(columns) -> list[str]:
    return [c for c in columns if c not in ROW_COLUMNS and c != "source" and c not in RECORDED
            and not PER_CLASS.match(c)]


def num_classes(df: pd.DataFrame) -> int:
    """C = the number of per-class F1 columns that hold values."""
    return sum(1 for c in df.columns if c.startswith("f1_") and PER_CLASS.match(c) and df[c].notna().any())


def recorded_in_json(csv_path) -> dict:
    """What a run recorded in its JSON beside its CSV, of :data:`RECORDED`: the training count
    (``class_counts``) and the name (``classes``) of each class; those it lacks, or all when the
    JSON is missing or unreadable, are left out. The analysis assumes no dataset's counts or names."""
    try:
        record = json.loads(Path(csv_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    out = {k: record[k] for k in RECORDED if record.get(k)}
    if "class_counts" in out:
        out["class_counts"] = [int(c) for c in out["class_counts"]]
    return out


def _recorded(df: pd.DataFrame, key: str) -> list | None:
    """The first value of the ``key`` column (of :data:`RECORDED`) that a run filled in, decoded."""
    if key not in df:
        return None
    known = [v for v in df[key] if isinstance(v, str) and v]
    return json.loads(known[0]) if known else None


def setting_defaults(rows: pd.DataFrame) -> dict:
    """The settings' defaults that the runs recorded, over all of them (the first run to record a
    setting's default gives it): one rule for every run's configuration id, those made before
    defaults were recorded included. Empty when no run recorded them (the ids are then as before)."""
    out: dict = {}
    if "setting_defaults" in rows:
        for text in dict.fromkeys(v for v in rows["setting_defaults"] if isinstance(v, str) and v):
            out = {**json.loads(text), **out}
    return out


def class_counts_of(df: pd.DataFrame) -> list[int] | None:
    """A run's (or a configuration's) training counts, from the ``class_counts`` column that
    :func:`load_rows` fills from the runs' JSONs."""
    return _recorded(df, "class_counts")


def class_names_of(df: pd.DataFrame) -> list[str] | None:
    """A run's (or a configuration's) class names, from the ``classes`` column that
    :func:`load_rows` fills from the runs' JSONs."""
    return _recorded(df, "classes")


# ----------------------------------------------------------------------------------------------
# Labels

def split_tag(tag: str) -> tuple[str, str]:
    """``"<suite>-<profile>"`` -> (suite, profile); a tag of no known suite is ("", tag)."""
    suite, _, profile = str(tag).partition("-")
    return (suite, profile) if suite in SUITES else ("", str(tag))


def fmt_num(v) -> str:
    """A number as ``%g`` (0.01, 1e-05, 8), anything else as text."""
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def tuning_label(ident: dict) -> str:
    """The tuning point as run_all_models names it: ``lr0.01-w1-8-g1.5-loss`` (+ ``-ce`` for CE)."""
    label = (f"lr{fmt_num(ident.get('stage2_lr'))}-w{fmt_num(ident.get('min_weight'))}-{fmt_num(ident.get('max_weight'))}"
             f"-g{fmt_num(ident.get('stage2_focal_gamma'))}-{ident.get('dynamic_mode')}")
    return label + ("-ce" if ident.get("stage2_loss_type") == "ce" else "")


def is_control(ident: dict) -> bool:
    """The same-budget control: our method with uniform weights and plain CE in stage 2."""
    return ident.get("exp_name") == "control" or (
        ident.get("method") == "two_stage_ictta" and ident.get("dynamic_mode") == "none"
        and ident.get("stage2_loss_type") == "ce")


def variant_and_role(ident: dict) -> tuple[str, str]:
    """``variant``: what a table row is called; ``role``: ``two_stage`` (the method at its default
    settings, or any untagged run of it), ``control``, ``tuning`` (a tuning point), ``ablation``
    (exp_name ``abl-...``, its variant name), ``method`` or ``variant``: a run of a method under
    an exp_name of its own (``ce_fp32``, ``ldam_drw_uniform_init``), a row of its own beside the
    method, compared with it (:func:`variant_pair_rows`) and never in its place."""
    exp, method = str(ident.get("exp_name") or ""), ident.get("method")
    if is_control(ident):
        return "control", "control"
    if exp.startswith("tune-"):
        return tuning_label(ident), "tuning"
    if exp.startswith(ABLATION_PREFIX):
        return exp, "ablation"
    if exp == "baseline":
        return "two_stage", "two_stage"
    if method == "two_stage_ictta" and split_tag(ident.get("tag", ""))[0] != "compare":
        return "two_stage", "two_stage"
    if exp and exp != method:
        return exp, "variant"
    return str(method), "method"


# ----------------------------------------------------------------------------------------------
# One row per run

def _flatten(summary: dict) -> dict:
    out = {}
    for stage in (1, 2):
        s = summary.get(f"stage{stage}")
        if not s:
            continue
        for kind in ("final", "best"):
            for split in ("val", "test"):
                for k in SCALAR_METRICS:
                    v = s[kind].get(split, {}).get(k)
                    if v is not None:
                        out[f"s{stage}_{kind}_{split}_{k}"] = v
        out[f"s{stage}_best_epoch"] = s["best"]["epoch"]
        out[f"s{stage}_best_selected_on"] = s["best"]["selected_on"]
    for kind in ("final", "best"):
        for split in ("val", "test"):
            for k in SCALAR_METRICS:
                a, b = out.get(f"s1_{kind}_{split}_{k}"), out.get(f"s2_{kind}_{split}_{k}")
                if a is not None and b is not None:
                    out[f"delta_{kind}_{split}_{k}"] = b - a
    peak = summary.get("peak")
    if peak:
        out.update({f"peak_test_{k}": v for k, v in peak["test"].items()})
        out["peak_global_epoch"], out["peak_evaluated"] = peak["global_epoch"], peak["evaluated"]
        out["peak_in_stage1"] = float(peak.get("stage") == 1)  # its mean over seeds: the share in stage 1
    return out


def config_id(ident: dict, defaults: dict | None = None) -> str:
    """A configuration's id over its identity columns. An empty one (a setting that older CSVs lack,
    or left unset) is left out, and so is one at its default of ``defaults`` (the code's defaults
    that runs record in their JSON): a setting added later, at its default, leaves the ids of the
    runs made before it alone."""
    defaults = {k: _plain(v) for k, v in (defaults or {}).items()}
    d = {k: _plain(v) for k, v in ident.items() if k not in NOT_CONFIG and _plain(v) is not None
         and (k not in defaults or _plain(v) != defaults[k])}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def summarize_run(df: pd.DataFrame, defaults: dict | None = None) -> dict:
    """One run's rows -> one summary row (see the module docstring)."""
    ident = {c: _plain(df[c].iloc[0]) for c in identity_columns(df.columns)}
    ident["tag"] = ident.get("tag") or ""
    suite, profile = split_tag(ident["tag"])
    variant, role = variant_and_role(ident)
    C = num_classes(df)
    done = {s: int(df.loc[df["stage"] == s, "epoch"].max()) if (df["stage"] == s).any() else 0 for s in (1, 2)}
    planned = {1: int(ident.get("stage1_epochs") or 0), 2: int(ident.get("stage2_epochs") or 0)}
    last_stage = 2 if planned[2] > 0 else 1
    complete = done[last_stage] >= planned[last_stage] and \
        bool(((df["stage"] == last_stage) & (df["epoch"] == planned[last_stage]) & (df["split"] == "test")).any())
    row = {"tag": ident["tag"], "suite": suite, "profile": profile, "model": ident.get("model"),
           "scenario": ident.get("scenario"), "imb_factor": ident.get("imb_factor"),
           "method": ident.get("method"), "exp_name": ident.get("exp_name"), "variant": variant, "role": role}
    row.update({k: v for k, v in ident.items() if k not in row})
    row.update(config_id=config_id(ident, defaults), num_classes=C,
               n_max_effective=max(class_counts_of(df) or [float("nan")]),
               complete=complete, stage1_epochs_done=done[1], stage2_epochs_done=done[2],
               has_val=bool((df["split"] == "val").any()), source=df["source"].iloc[0] if "source" in df else "")
    row.update(_flatten(summarize_rows(df)))
    if "tau" in df and df["tau"].notna().any():  # tau-norm's tau, chosen on validation
        last2 = df[(df["stage"] == 2) & df["tau"].notna()]
        if len(last2):
            row["s2_final_tau"] = float(last2.loc[last2["epoch"].idxmax(), "tau"])
    return row


def summarize_runs(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run (per ``source`` file) of :func:`load_rows`' table."""
    key = "source" if "source" in rows else "run_id"
    defaults = setting_defaults(rows)
    out = [summarize_run(df.sort_values(["stage", "epoch"], kind="stable"), defaults)
           for _, df in rows.groupby(key, sort=False)]
    summary = pd.DataFrame(out)
    order = ["tag", "model", "scenario", "imb_factor", "variant", "seed"]
    return summary.sort_values([c for c in order if c in summary], kind="stable", na_position="first") \
        .reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if re.match(r"^(s[12]_(final|best)_|delta_|peak_|s[12]_best_epoch$|s2_final_tau$)", c)
            and pd.api.types.is_numeric_dtype(df[c])]


# ----------------------------------------------------------------------------------------------
# Intervals over seeds

# t_{0.975, df}, df = 1..30: the two-sided 95% quantiles of Student's t (4 decimals)
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959963984540054  # the normal's 0.975 quantile, t's limit


def t975(df: int) -> float:
    """t_{0.975, df}: the table for df <= 30; beyond it the Cornish-Fisher expansion around the
    normal quantile z, ``z + (z^3 + z)/(4 df) + (5z^5 + 16z^3 + 3z)/(96 df^2)
    + (3z^7 + 19z^5 + 17z^3 - 15z)/(384 df^3)`` (off by < 2e-6 from df 31 on)."""
    if df < 1:
        raise ValueError(f"df={df!r}: a t interval needs at least 2 values")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def interval95(values) -> dict:
    """``n``, ``mean``, ``std`` (sample, ddof=1) and the 95% Student-t interval
    ``mean ± t_{0.975, n-1} * std / sqrt(n)`` (``ci95_lo``, ``ci95_hi``) of the finite values.
    With fewer than 2 values there is no std and no interval (NaN)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n, nan = len(v), float("nan")
    if n < 2:
        return {"n": n, "mean": float(v[0]) if n else nan, "std": nan, "ci95_lo": nan, "ci95_hi": nan}
    mean, std = float(v.mean()), float(v.std(ddof=1))
    half = t975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95_lo": mean - half, "ci95_hi": mean + half}


def fmt_stat(s: dict, digits: int = 2, signed: bool = False) -> str:
    """``interval95``'s dict as text: ``"mean ± std [lo, hi]"`` for n >= 2, ``"mean (n=1, no
    interval)"`` for one value, ``"–"`` for none. ``signed`` puts + before positive numbers."""
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if not s["n"]:
        return "–"
    if s["n"] == 1:
        return f.format(s["mean"]) + " (n=1, no interval)"
    return (f.format(s["mean"]) + f" ± {s['std']:.{digits}f} "
            + f"[{f.format(s['ci95_lo'])}, {f.format(s['ci95_hi'])}]")


# ----------------------------------------------------------------------------------------------
# Over seeds

def setting_columns(summary: pd.DataFrame) -> list[str]:
    """The columns of a summary that describe a configuration (all but metrics, ids, seed and
    progress): what the runs of one ``config_id`` share."""
    metrics = set(metric_columns(summary))
    return [c for c in summary.columns if c not in metrics and c not in
            (*NOT_CONFIG, "source", "complete", "stage1_epochs_done", "stage2_epochs_done",
             "s1_best_selected_on", "s2_best_selected_on")]


def aggregate_seeds(summary: pd.DataFrame, complete_only: bool = True) -> pd.DataFrame:
    """One row per configuration: its settings, ``n_seeds``, ``seeds`` and every metric's
    ``_mean``, ``_std`` (sample std, ddof=1) and ``_ci95`` (half-width of the 95% Student-t
    interval: ``mean ± ci95``) over seeds; std and ci95 are NaN for a single seed. A metric that
    some seeds lack also gets ``_n``, the seeds it rests on (:func:`metric_n`)."""
    df = summary[summary["complete"]] if complete_only else summary
    metrics, settings = metric_columns(df), setting_columns(df)
    out = []
    for cid, g in df.groupby("config_id", sort=False):
        row = {c: g[c].iloc[0] for c in settings}
        seeds = sorted(int(s) for s in g["seed"])
        row.update(n_seeds=len(g), seeds=" ".join(map(str, seeds)))
        for c in metrics:
            s = interval95(g[c].astype(float))
            row[f"{c}_mean"], row[f"{c}_std"], row[f"{c}_ci95"] = s["mean"], s["std"], s["ci95_hi"] - s["mean"]
            if 0 < s["n"] < len(g):  # a metric no seed has is NaN, and metric_n says 0
                row[f"{c}_n"] = s["n"]
        out.append(row)
    return pd.DataFrame(out, columns=None if out else [*settings, "n_seeds", "seeds"])


def metric_n(row, column: str) -> int:
    """How many seeds an aggregated metric (``column`` without ``_mean``) of a configuration rests
    on: its ``_n`` where some seeds lack it, else ``n_seeds``; 0 where no seed has it."""
    if pd.isna(row.get(f"{column}_mean", float("nan"))):
        return 0
    n = row.get(f"{column}_n", float("nan"))
    return int(n if pd.notna(n) else row.get("n_seeds", 0))


def level(row, column: str, scale: float = 100.0) -> dict:
    """One aggregated metric of a configuration (``column`` without ``_mean``) back as
    ``interval95``'s dict, times ``scale`` (per cent by default)."""
    mean, std, half = (row.get(f"{column}_{k}", float("nan")) for k in ("mean", "std", "ci95"))
    n = metric_n(row, column)
    return {"n": n, "mean": scale * mean, "std": scale * std,
            "ci95_lo": scale * (mean - half), "ci95_hi": scale * (mean + half)}


# ----------------------------------------------------------------------------------------------
# Paired differences

PAIR_ON = ("seed", "stage1_id")  # partners: the same seed AND the same stage-1 checkpoint
# Stage-1 results that a run reading a shared checkpoint repeats exactly; runs with one stage1_id
# whose values differ trained their stage 1 apart (other machines, other results folders)
STAGE1_FINGERPRINT = ("s1_final_val_loss", "s1_final_test_loss")
PAIR_GROUP = ("profile", "model", "scenario", "imb_factor")  # partners are looked for within one
PAIRED_METRICS = (("macro_f1", "macro-F1"), ("tail_macro_f1", "tail macro-F1"))
PAIRED_SPLITS = ("test", "val")
# what each comparison subtracts from what (treated - reference), in the paired table's order
COMPARISONS = {"vs_control": "two-stage minus its same-budget control",
               "stage2_vs_stage1": "stage 2 minus stage 1 of the two-stage run",
               "tuning_vs_default": "tuning point minus the default two-stage run",
               "ablation_vs_default": "ablation variant minus the default two-stage run",
               "ablation_vs_drw": "ablation variant minus drw",
               "ablation_vs_logit_adjust": "ablation variant minus logit_adjust (its own stage 1: paired by seed only)",
               "two_stage_vs_method": "two_stage_ictta minus a method of the compare suite that shares its stage 1",
               "two_stage_vs_method_seed": "two_stage_ictta minus a method of the compare suite with a stage 1 of its "
                                           "own, paired by seed only (the same subset, splits and initialisation)",
               "variant_vs_method": "a named variant of a method (its exp_name: ce_fp32, ce_jpeg50, ...) minus the "
                                    "method, paired by seed only"}


def _run_name(r) -> str:
    return f"{r['variant']} seed {int(r['seed'])}"


def pair_runs(treated: pd.DataFrame, reference: pd.DataFrame, on: tuple = PAIR_ON) -> tuple[list, list[str]]:
    """Pairs ``(treated run, reference run)`` of summary rows with the same seed and the same
    ``stage1_id`` (``on``: the seed first, then what else partners share), one to one, and a line
    for each run left without a partner, with the reason (no run of that seed, another stage 1,
    several candidates): a run is never dropped silently."""
    assert on[0] == "seed", on
    shared = " and ".join({"stage1_id": "stage 1"}.get(k, k) for k in on)
    t_keys = [pair_key(r, on) for _, r in treated.iterrows()]
    by_key: dict[tuple, list] = {}
    for _, r in reference.iterrows():
        by_key.setdefault(pair_key(r, on), []).append(r)
    ref_seeds = {_plain(r["seed"]): r for _, r in reference.iterrows()}
    ref_name = reference["variant"].iloc[0] if len(reference) else "reference"
    pairs, unpaired, used = [], [], set()
    for (_, t), k in zip(treated.iterrows(), t_keys):
        partners = by_key.get(k, [])
        if len(partners) == 1 and t_keys.count(k) == 1 and "stage1_id" in on and not same_stage1(t, partners[0]):
            unpaired.append(f"{_run_name(t)}: the {ref_name} run of this seed has the same stage-1 settings but "
                            f"trained its stage 1 apart (stage-1 test loss {stage1_results(partners[0])} vs "
                            f"{stage1_results(t)})")
        elif len(partners) == 1 and t_keys.count(k) == 1:
            pairs.append((t, partners[0]))
            used.add(k)
        elif partners:
            unpaired.append(f"{_run_name(t)}: {len(partners)} {ref_name} run(s) and {t_keys.count(k)} of its own "
                            f"share this {shared} (ambiguous)")
        elif k[0] in ref_seeds:
            unpaired.append(f"{_run_name(t)}: the {ref_name} run of this seed has another stage 1 "
                            f"({ref_seeds[k[0]]['stage1_id']} vs {t['stage1_id']})")
        else:
            unpaired.append(f"{_run_name(t)}: no {ref_name} run of this seed")
    t_name = treated["variant"].iloc[0] if len(treated) else "treated"
    unpaired += no_partner_lines([r for k, rs in by_key.items() if k not in used and k not in t_keys for r in rs],
                                 t_name)
    return pairs, unpaired


def pair_key(r, on: tuple = PAIR_ON) -> tuple:
    """What partners share (``on``), of summary row ``r``."""
    return tuple(_plain(r[k]) for k in on)


def same_stage1(a, b) -> bool:
    """Whether summary rows ``a`` and ``b`` hold the same stage-1 results (:data:`STAGE1_FINGERPRINT`),
    as two runs reading one stage-1 checkpoint do; a value that one of them lacks does not count."""
    for col in STAGE1_FINGERPRINT:
        x, y = _plain(a.get(col)), _plain(b.get(col))
        if x is not None and y is not None and not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True


def stage1_results(r) -> str:
    """The stage-1 test loss of summary row ``r``, for a line that says two stage 1s differ."""
    v = _plain(r.get("s1_final_test_loss"))
    return "n/a" if v is None else f"{v:.4f}"


def no_partner_lines(runs, partner_name: str) -> list[str]:
    """The ``unpaired`` line of each run (summary rows) that has no ``partner_name`` partner."""
    return [f"{_run_name(r)}: no {partner_name} partner" for r in runs]


def difference_rows(what: dict, seeds: list, diffs: dict, unpaired: list[str]) -> list[dict]:
    """One row per (split, metric) of ``diffs`` (per-seed differences in percentage points):
    ``n``, ``mean``, ``std``, ``ci95_lo``/``ci95_hi`` (:func:`interval95`), ``wins`` and ``ties``
    (seeds where the difference is > 0, = 0), ``interval`` as text and the ``unpaired`` runs. A
    split that no run logged gives no row; a comparison without any pair gives its test rows, n = 0."""
    rows = []
    for (split, metric), d in diffs.items():
        d = np.asarray(d, dtype=float)
        if len(d) and not np.isfinite(d).any():
            continue  # e.g. no validation split
        if not len(d) and split != "test":
            continue
        s = interval95(d)
        wins, ties = int((d > 0).sum()), int((d == 0).sum())
        text = (fmt_stat(s, signed=True) + f", wins {wins}/{s['n']}" + (f" ({ties} tied)" if ties else "")
                if s["n"] else "no pairs")
        rows.append({**what, "split": split, "metric": metric, "seeds": " ".join(str(int(x)) for x in seeds),
                     **s, "wins": wins, "ties": ties, "interval": text, "unpaired": "; ".join(unpaired)})
    return rows


def _configs(runs: pd.DataFrame) -> list[pd.DataFrame]:
    return [g for _, g in runs.groupby("config_id", sort=False)]


def differing_settings(treated: pd.DataFrame, reference: pd.DataFrame) -> str:
    """The settings in which two configurations differ (space-separated column names); a setting
    that one side did not record (an older CSV) is not counted."""
    t, r = treated.iloc[0], reference.iloc[0]
    return " ".join(c for c in setting_columns(treated) if c not in ("config_id", "variant", "role") and c in r
                    and None not in (_plain(t[c]), _plain(r[c])) and _plain(t[c]) != _plain(r[c]))


def _pair_diffs(what: dict, pairs: list, unpaired: list[str]) -> list[dict]:
    diffs = {(split, m): [100 * (t.get(f"s2_final_{split}_{m}", np.nan) - r.get(f"s2_final_{split}_{m}", np.nan))
                          for t, r in pairs] for split in PAIRED_SPLITS for m, _ in PAIRED_METRICS}
    return difference_rows(what, [t["seed"] for t, _ in pairs], diffs, unpaired)


def paired_rows(what: dict, treated: pd.DataFrame, reference: pd.DataFrame, on: tuple = PAIR_ON) -> list[dict]:
    """``treated - reference`` at stage 2's last epoch, paired by :func:`pair_runs` ``on`` those
    columns, one set of rows per pair of configurations (treated ``config_id``, reference
    ``config_id``) with partners: no interval mixes two configurations or counts a seed twice
    (e.g. CPU and GPU runs of one grid in one results folder). A treated configuration without
    any partner gets rows with n = 0 that say why, and every row lists the runs of reference
    configurations that pair with none: no run is dropped silently."""
    treated_configs, reference_configs = _configs(treated), _configs(reference)
    matched = [(t, r, *pair_runs(t, r, on)) for t in treated_configs for r in reference_configs]
    matched = [m for m in matched if m[2]]
    used = {r["config_id"].iloc[0] for _, r, _, _ in matched}
    orphan_runs = [run for r in reference_configs if r["config_id"].iloc[0] not in used for _, run in r.iterrows()]
    orphans = no_partner_lines(orphan_runs, what["treated"])
    rows = []
    for t in treated_configs:
        mine = [(r, pairs, unpaired) for t2, r, pairs, unpaired in matched if t2 is t]
        for r, pairs, unpaired in mine:
            elsewhere = {_run_name(x) for r2, ps, _ in mine if r2 is not r for x, _ in ps}
            lines = [line for line in unpaired if line.split(": ")[0] not in elsewhere]
            rows += _pair_diffs({**_what_config(what, t), "reference_config": r["config_id"].iloc[0],
                                 "differs": differing_settings(t, r)}, pairs, lines + orphans)
        if not mine:
            own = {_run_name(x) for _, x in t.iterrows()}
            reasons = [line for line in pair_runs(t, reference, on)[1] if line.split(": ")[0] in own]
            named = {pair_key(x, on) for _, x in t.iterrows()}  # the reasons name the runs they share these with
            rest = [line for run, line in zip(orphan_runs, orphans) if pair_key(run, on) not in named]
            rows += _pair_diffs(_what_config(what, t), [], reasons + rest)
    if not len(treated) and len(reference):
        rows += _pair_diffs(what, [], orphans)
    return rows


def stage_gain_rows(what: dict, runs: pd.DataFrame) -> list[dict]:
    """Stage 2's last epoch minus stage 1's last epoch, within each run (its own pair), per configuration."""
    rows = []
    for g in _configs(runs):
        diffs = {(split, m): 100 * g.get(f"delta_final_{split}_{m}", pd.Series(np.nan, g.index)).to_numpy(float)
                 for split in PAIRED_SPLITS for m, _ in PAIRED_METRICS}
        rows += difference_rows(_what_config(what, g), list(g["seed"]), diffs, [])
    return rows


def default_two_stage(g: pd.DataFrame) -> pd.DataFrame:
    """The default two-stage runs of a group, that ablation variants are compared with: the compare
    suite's ``two_stage_ictta`` runs if there are any, else the baseline's (role two_stage)."""
    compare = g[(g["suite"] == "compare") & (g["role"] == "method") & (g["method"] == "two_stage_ictta")]
    return compare if len(compare) else g[g["role"] == "two_stage"]


ABLATION_REFERENCES = ("default", "drw", "logit_adjust")
REFERENCE_LABEL = {"default": "two_stage (default)"}


def ablation_references(g: pd.DataFrame) -> list[tuple[str, pd.DataFrame, tuple]]:
    """What each ablation variant of a group is paired with, and on which columns: the default
    two-stage run and drw on the variant's stage 1, and logit_adjust, whose stage 1 is its own
    (trained with its loss), by seed."""
    method = g[g["role"] == "method"]
    return [("default", default_two_stage(g), PAIR_ON), ("drw", method[method["method"] == "drw"], PAIR_ON),
            ("logit_adjust", method[method["method"] == "logit_adjust"], ("seed",))]


def _what(key: dict, comparison: str, treated: pd.DataFrame, reference_name: str) -> dict:
    """The identifying columns of a comparison's rows; ``treated`` is the two-stage run when the
    treated side has no run (its partners are then all listed as unpaired)."""
    name = treated["variant"].iloc[0] if len(treated) else "two_stage"
    return {**key, "comparison": comparison, "treated": name, "reference": reference_name}


def _what_config(what: dict, treated: pd.DataFrame) -> dict:
    """``what`` of one treated configuration: its name and ``treated_config``."""
    return {**what, "treated": treated["variant"].iloc[0], "treated_config": treated["config_id"].iloc[0]}


def compare_pair_rows(key: dict, g: pd.DataFrame) -> list[dict]:
    """The compare suite's paired design: ``two_stage_ictta`` minus each method (and named variant:
    ``drw_sam``) that trained from the same stage-1 checkpoints (ce, drw, crt, tau_norm), minus each
    other one paired by seed only, and its stage 2 minus its stage 1. A named variant of
    ``two_stage_ictta`` (``two_stage_sam``) is paired the same way with the methods of its own
    stage 1 (``drw_sam``), and with no other."""
    methods = g[g["role"].isin(("method", "variant")) & (g["suite"] == "compare")]
    ours = methods[methods["method"] == "two_stage_ictta"]
    others = methods[methods["method"] != "two_stage_ictta"]
    rows = []
    for _, two_stage in ours.groupby("variant", sort=False):
        plain = two_stage["role"].iloc[0] == "method"
        rows += stage_gain_rows(_what(key, "stage2_vs_stage1", two_stage, "stage 1"), two_stage)
        for name, other in others.groupby("variant", sort=False):
            if set(other["stage1_id"]) & set(two_stage["stage1_id"]):
                rows += paired_rows(_what(key, "two_stage_vs_method", two_stage, name), two_stage, other)
            elif plain:
                rows += paired_rows(_what(key, "two_stage_vs_method_seed", two_stage, name), two_stage, other,
                                    on=("seed",))
    return rows


def variant_pair_rows(key: dict, g: pd.DataFrame) -> list[dict]:
    """Each named variant of a method (role ``variant``: ``ce_fp32``, ``ce_jpeg50``,
    ``ldam_drw_uniform_init``) minus the method's own runs of any suite, paired by seed: the same
    subset, splits and batch order (and init, unless the variant changes it), not the same stage 1."""
    methods = g[g["role"] == "method"]
    rows = []
    for (method, _), variant in g[g["role"] == "variant"].groupby(["method", "variant"], sort=False):
        rows += paired_rows(_what(key, "variant_vs_method", variant, method), variant,
                            methods[methods["method"] == method], on=("seed",))
    return rows


def paired_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Every paired comparison of :data:`COMPARISONS` among the finished runs, per
    (profile, model, scenario, imb_factor), at stage 2's last epoch, on test and validation
    macro-F1 and tail macro-F1, in percentage points (see :func:`difference_rows`)."""
    done = summary[summary["complete"]]
    rows = []
    for key, g in done.groupby(list(PAIR_GROUP), sort=True, dropna=False):
        key = dict(zip(PAIR_GROUP, key))
        two_stage, control = g[g["role"] == "two_stage"], g[g["role"] == "control"]
        if len(two_stage) or len(control):
            rows += paired_rows(_what(key, "vs_control", two_stage, "control"), two_stage, control)
        if len(two_stage):
            rows += stage_gain_rows(_what(key, "stage2_vs_stage1", two_stage, "stage 1"), two_stage)
        for _, t in g[g["role"] == "tuning"].groupby("config_id", sort=False):
            rows += paired_rows(_what(key, "tuning_vs_default", t, "two_stage"), t, two_stage)
        for _, a in g[g["role"] == "ablation"].groupby("config_id", sort=False):
            for ref, runs, on in ablation_references(g):
                rows += paired_rows(_what(key, f"ablation_vs_{ref}", a, REFERENCE_LABEL.get(ref, ref)), a, runs, on=on)
        rows += compare_pair_rows(key, g) + variant_pair_rows(key, g)
    cols = [*PAIR_GROUP, "comparison", "treated", "treated_config", "reference", "reference_config", "differs",
            "split", "metric", "n", "seeds", "mean", "std", "ci95_lo", "ci95_hi", "wins", "ties", "interval",
            "unpaired"]
    return pd.DataFrame(rows, columns=cols)


PAIRED_INTRO = ("Treated minus reference at stage 2's last epoch, in percentage points: mean ± std over "
                "pairs [95% Student-t interval], and the number of seeds where the treated run is ahead. "
                "Partners share the seed and the stage-1 checkpoint (`stage1_id`), but a named variant and "
                "its method share the seed only; runs without a partner are listed, never dropped. Each row "
                "pairs one configuration with one (`configs`: their `config_id`s, treated / reference; the "
                "settings in which they differ are in the CSV's `differs`). Test split; validation rows are in "
                "`paired_differences.csv`.")
ABLATION_INTRO = ("Stage 2's last epoch, in %: mean ± std over seeds [95% Student-t interval]. Differences are "
                  "paired (same seed and stage-1 checkpoint; logit_adjust, which trains its own stage 1, by "
                  "seed only), in percentage points, with the seeds won. "
                  "**closes the gap**: the mean paired difference vs drw in macro-F1 is >= 0 on validation "
                  "(the choice) and still >= 0 on test (the check); \"on validation only\" if the test does not "
                  "confirm it; \"no\" if validation says no (test not consulted); no verdict from one seed.")


def markdown_head(title: str, intro: str) -> list[str]:
    """The first lines of a markdown table file: its title and how to read it."""
    return [f"# {title}", "", intro, ""]


def paired_markdown(paired: pd.DataFrame) -> str:
    """The paired table's test rows as markdown, one table per comparison kind."""
    if not len(paired):
        return "No paired comparisons yet (no two-stage/control, tuning or ablation runs).\n"
    lines = markdown_head("Paired differences", PAIRED_INTRO)
    test = paired[paired["split"] == "test"]
    for comp, text in COMPARISONS.items():
        g = test[test["comparison"] == comp]
        if not len(g):
            continue
        lines += [f"## {text}", "", "| profile | model | scenario | imb | treated | reference | configs | "
                  + " | ".join(f"{label} (pp)" for _, label in PAIRED_METRICS) + " | unpaired |",
                  "|" + "---|" * (8 + len(PAIRED_METRICS))]
        for _, r in g.groupby(["profile", "model", "scenario", "imb_factor", "treated_config", "reference",
                               "reference_config"], sort=False, dropna=False):
            first = r.iloc[0]
            configs = " / ".join(str(c)[:8] if isinstance(c, str) and c else "–"
                                 for c in (first["treated_config"], first["reference_config"]))
            cells = [first["profile"] or "-", first["model"], first["scenario"], f"{first['imb_factor']:g}",
                     str(first["treated"]), str(first["reference"]), configs]
            by_metric = r.set_index("metric")
            cells += [by_metric.loc[m, "interval"] if m in by_metric.index else "–" for m, _ in PAIRED_METRICS]
            cells.append(first["unpaired"] or "none")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Ablation: variants of the two-stage method against its default run and against drw

ABLATION_LEVELS = [(split, m) for split in ("val", "test") for m, _ in PAIRED_METRICS]


def gap_verdict(val: dict | None, test: dict | None) -> str:
    """Does a variant close the gap to drw? Decided on **validation** macro-F1 and only then
    checked on test: ``"closes the gap"`` if the mean paired difference vs drw is >= 0 on
    validation and on test; ``"on validation only"`` if it is >= 0 on validation but < 0 on test;
    ``"no"`` if it is < 0 on validation (test is not consulted); ``"no drw pairs"`` without pairs;
    ``"one seed: no verdict"`` with a single pair (no interval to read the mean against)."""
    if val is None or not val["n"]:
        return "no drw pairs"
    if val["n"] < 2:
        return "one seed: no verdict"
    if val["mean"] < 0:
        return "no"
    return "closes the gap" if test is not None and test["n"] and test["mean"] >= 0 else "on validation only"


def ablation_table(agg: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """One row per ablation variant (and, as context, its group's references of
    :func:`ablation_references`, ``kind`` default/drw/logit_adjust): val and test macro-F1 and tail
    macro-F1 at stage 2's last epoch in % (``<split>_<metric>_mean/_std/_ci95_lo/_ci95_hi`` and the
    text), the paired differences vs each reference (``vs_<reference>_<split>_<metric>_...``: n,
    mean, ci95_lo, ci95_hi, wins, text), and the :func:`gap_verdict` (``closes_gap``)."""
    if not len(agg) or not (agg["role"] == "ablation").any():
        return pd.DataFrame()
    rows = []
    for key, g in agg.groupby(list(PAIR_GROUP), sort=True, dropna=False):
        variants = g[g["role"] == "ablation"]
        if not len(variants):
            continue
        refs = [(kind, runs) for kind, runs, _ in ablation_references(g)]
        for kind, cfgs in [*refs, ("variant", variants)]:
            for _, r in cfgs.iterrows():
                row = {**dict(zip(PAIR_GROUP, key)), "kind": kind, "variant": r["variant"], "tag": r["tag"],
                       "config_id": r["config_id"], "n_seeds": r["n_seeds"], "seeds": r["seeds"]}
                for split, m in ABLATION_LEVELS:
                    s = level(r, f"s2_final_{split}_{m}")
                    row.update({f"{split}_{m}_pct_{k}": s[k] for k in ("mean", "std", "ci95_lo", "ci95_hi")})
                    row[f"{split}_{m}_pct"] = fmt_stat(s)
                if kind == "variant":
                    row.update(_ablation_differences(paired, r["config_id"]))
                rows.append(row)
    return pd.DataFrame(rows)


def main_reference(rows: pd.DataFrame) -> pd.DataFrame:
    """Paired rows of one treated configuration in one comparison, kept to the reference
    configuration with the most pairs (the others, e.g. the same method run on another device,
    stay in the paired table)."""
    ref = rows["reference_config"].fillna("")
    if ref.nunique() <= 1:
        return rows
    return rows[ref == rows.assign(ref=ref).groupby("ref")["n"].max().idxmax()]


def _ablation_differences(paired: pd.DataFrame, config_id: str) -> dict:
    out, found = {}, {}
    mine = paired[paired["treated_config"] == config_id]
    for ref in ABLATION_REFERENCES:
        vs = main_reference(mine[mine["comparison"] == f"ablation_vs_{ref}"])
        for split, m in ABLATION_LEVELS:
            p = vs[(vs["split"] == split) & (vs["metric"] == m)]
            s = p.iloc[0].to_dict() if len(p) else None
            found[(ref, split, m)] = s
            prefix = f"vs_{ref}_{split}_{m}"
            out.update({f"{prefix}_{k}": (s[k] if s else np.nan) for k in ("n", "mean", "ci95_lo", "ci95_hi", "wins")})
            out[prefix] = s["interval"] if s else "no pairs"
        out[f"vs_{ref}_unpaired"] = vs["unpaired"].iloc[0] if len(vs) else ""
    out["closes_gap"] = gap_verdict(found[("drw", "val", "macro_f1")], found[("drw", "test", "macro_f1")])
    return out


def chosen_variant(group: pd.DataFrame) -> pd.Series | None:
    """The ablation variant of one group (rows of :func:`ablation_table`) with the highest mean
    validation macro-F1 at stage 2's last epoch, among those with at least two seeds; ties go to
    the first. Test plays no part. None without such a variant."""
    variants = group[(group["kind"] == "variant") & (group["n_seeds"] >= 2)]
    variants = variants[variants["val_macro_f1_pct_mean"].notna()]
    return None if not len(variants) else variants.loc[variants["val_macro_f1_pct_mean"].idxmax()]


def ablation_markdown(table: pd.DataFrame) -> str:
    """The ablation table as markdown: per group, the levels, then the paired differences and the verdict."""
    if not len(table):
        return "No ablation runs yet (exp_name abl-...).\n"
    lines = markdown_head("Ablation: variants of the two-stage method", ABLATION_INTRO)
    for key, g in table.groupby(list(PAIR_GROUP), sort=False, dropna=False):
        d = dict(zip(PAIR_GROUP, key))
        lines += [f"## {d['profile'] or '(untagged)'} · {d['model']} · {d['scenario']} · imb {d['imb_factor']:g}", "",
                  "| variant | kind | seeds | " + " | ".join(f"{split} {label} (%)" for split in ("val", "test")
                                                           for _, label in PAIRED_METRICS) + " |",
                  "|" + "---|" * (3 + len(ABLATION_LEVELS))]
        for _, r in g.iterrows():
            lines.append(f"| {r['variant']} | {r['kind']} | {int(r['n_seeds'])} | "
                         + " | ".join(r[f"{split}_{m}_pct"] for split, m in ABLATION_LEVELS) + " |")
        lines += ["", "| variant | vs | val macro-F1 (pp) | test macro-F1 (pp) | val tail (pp) | test tail (pp) "
                  "| closes the gap |", "|---|---|---|---|---|---|---|"]
        for _, r in g[g["kind"] == "variant"].iterrows():
            for ref in (ref for ref in ABLATION_REFERENCES if ref == "default" or (g["kind"] == ref).any()):
                cells = [r[f"vs_{ref}_{split}_{m}"] for m in ("macro_f1", "tail_macro_f1") for split in ("val", "test")]
                lines.append(f"| {r['variant']} | {ref} | " + " | ".join(cells) + " | "
                             + (r["closes_gap"] if ref == "drw" else "") + " |")
        chosen = chosen_variant(g)
        if chosen is not None:
            lines += ["", f"Chosen on validation (highest mean val macro-F1, at least two seeds): "
                          f"**{chosen['variant']}**, {chosen['val_macro_f1_pct']} (test: {chosen['test_macro_f1_pct']})."]
        unpaired = [f"{r['variant']} vs {ref}: {r[f'vs_{ref}_unpaired']}" for _, r in g[g["kind"] == "variant"].iterrows()
                    for ref in ABLATION_REFERENCES if r[f"vs_{ref}_unpaired"]]
        lines += [""] + ([f"Unpaired: {'; '.join(unpaired)}", ""] if unpaired else [])
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Best configuration, chosen on validation

BEST_KEY = ("profile", "model", "scenario", "imb_factor")
SELECT_ON = "s2_best_val_macro_f1_mean"


GRID_CANDIDATES = {"role": ("two_stage", "tuning"), "suite": ("baseline", "tuning", "")}
METHOD_CANDIDATES = {"role": ("method",), "suite": ("compare",)}


def best_configs(agg: pd.DataFrame, by=BEST_KEY, notes: list | None = None,
                 candidates: dict = GRID_CANDIDATES) -> pd.DataFrame:
    """Per ``by`` group, the configuration with the highest validation macro-F1.

    ``candidates`` filters the configurations by column; by default (``GRID_CANDIDATES``) the
    baseline suite's default two-stage run and the tuning points (``role`` two_stage or tuning, of
    the baseline/tuning suites or untagged), pooled over their tags so that the tuning grid is
    compared with its default point; ``METHOD_CANDIDATES`` picks among the compare suite's methods.
    The score is stage 2's best-by-validation epoch's validation macro-F1, averaged over seeds
    (``SELECT_ON``); ties go to the first. Test numbers are reported (mean, std and ``_ci95``),
    never used. A group without validation rows gets no choice (and a note). With no candidate at
    all (a compare folder of named variants only, say) the frame is empty but has the ``by`` columns.
    """
    notes = notes if notes is not None else []
    if not len(agg):
        return pd.DataFrame(columns=list(by))
    cand = agg[np.logical_and.reduce([agg[col].isin(values) for col, values in candidates.items()])]
    rows = []
    for key, g in cand.groupby(list(by), sort=True, dropna=False):
        if SELECT_ON not in g or g[SELECT_ON].isna().all():
            notes.append(f"no validation macro-F1 for {dict(zip(by, key))}: no best configuration chosen "
                         "(val_per_class=0?); the test set is not used to choose")
            continue
        best = g.loc[g[SELECT_ON].idxmax()]
        if g["n_seeds"].nunique() > 1:
            note = (f"{dict(zip(by, key))}: the candidates have {g['n_seeds'].min()} to {g['n_seeds'].max()} "
                    "seeds, so the choice compares means over different seeds (fewer seeds, more noise)")
            notes += [note] if note not in notes else []
        row = {**dict(zip(by, key)), "n_candidates": len(g), "tag": best["tag"], "variant": best["variant"],
               "exp_name": best["exp_name"], "config_id": best["config_id"],
               **{k: best.get(k) for k in TUNED + ("ema_alpha", "stage1_epochs", "stage2_epochs")},
               "n_seeds": best["n_seeds"], "seeds": best["seeds"]}
        select = SELECT_ON.removesuffix("_mean")
        for c in [f"{select}_{s}" for s in ("mean", "std", "ci95")] + [
                f"s2_{kind}_test_{m}_{s}" for kind in ("best", "final") for m, _ in COMPARE_METRICS
                for s in ("mean", "std", "ci95")] + [
                f"{c}_{s}" for c in ("s1_final_test_macro_f1", "delta_final_test_macro_f1", "s2_best_epoch")
                for s in ("mean", "std", "ci95")]:
            row[c] = best.get(c, float("nan"))
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(by))


# ----------------------------------------------------------------------------------------------
# The methods side by side

SELECTIONS = {"final": "stage-2 last epoch", "best": "stage-2 best-by-validation epoch",
              "peak": "best test accuracy over the evaluated epochs (the references' protocol: test chooses)"}
SELECTED = {"final": "s2_final", "best": "s2_best", "peak": "peak"}  # each selection's column prefix
COMPARE_CASE = ["tag", "model", "scenario", "imb_factor"]  # one table of methods each


def compare_table(agg: pd.DataFrame, suites=("compare",)) -> pd.DataFrame:
    """Rows = methods of the ``suites`` runs, per (tag, model, scenario, imb_factor) and selection
    (``final``: stage 2's last epoch, ``best``: its best-by-validation epoch, ``peak``: the best
    test epoch over both stages, the references' protocol, with ``test_evaluations``); columns = the test
    metrics in %, ``<m>_pct_mean`` / ``_std`` / ``_ci95_lo`` / ``_ci95_hi`` (the 95% Student-t
    interval over seeds) and ``<m>_pct``, the text of :func:`fmt_stat` ("mean ± std [lo, hi]", or
    "mean (n=1, no interval").

    Within a case the methods are ranked by :func:`method_rank` (the ``final`` selection's mean
    test macro-F1, best first), in both selections, so that the two tables list them alike."""
    df = agg[agg["suite"].isin(suites)] if len(agg) else agg
    rows = []
    for _, r in df.iterrows():
        for sel in SELECTIONS:
            row = {k: r.get(k) for k in ("tag", "model", "scenario", "imb_factor")}
            row.update(selection=sel, method=r["variant"], n_seeds=r["n_seeds"], seeds=r["seeds"],
                       stage1_epochs=r.get("stage1_epochs"), stage2_epochs=r.get("stage2_epochs"),
                       n_max=r.get("n_max_effective"), val_per_class=r.get("val_per_class"),
                       test_evaluations=r.get("peak_evaluated_mean"), peak_in_stage1=r.get("peak_in_stage1_mean"))
            for m, _ in COMPARE_METRICS:
                s = level(r, f"{SELECTED[sel]}_test_{m}")
                row.update({f"test_{m}_pct_{k}": s[k] for k in ("mean", "std", "ci95_lo", "ci95_hi")})
                row[f"test_{m}_pct"] = fmt_stat(s)
            rows.append(row)
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    out["_rank"] = method_rank(out)
    out["_sel"] = out["selection"].map(list(SELECTIONS).index)  # final first
    out = out.sort_values([*COMPARE_CASE, "_sel", "_rank", "method"], kind="stable")
    return out.drop(columns=["_rank", "_sel"]).reset_index(drop=True)


def method_rank(table: pd.DataFrame) -> pd.Series:
    """Each row's sort key within its case: minus its method's mean test macro-F1 at stage 2's
    last epoch (the ``final`` selection, as the literature ranks methods), so the best comes
    first; a method without one goes last. The order comes from the results, not from a list of
    method names, so a new method needs no change here."""
    final = table[table["selection"] == "final"]
    score = final.groupby([*COMPARE_CASE, "method"], dropna=False)["test_macro_f1_pct_mean"].max()
    keys = pd.MultiIndex.from_frame(table[[*COMPARE_CASE, "method"]])
    return pd.Series(-score.reindex(keys).to_numpy(), index=table.index).fillna(np.inf)


def compare_markdown(table: pd.DataFrame) -> str:
    """``compare_table`` as markdown: one table per (tag, model, scenario, imb_factor, selection),
    the best mean of each column in bold, with the recipe's facts above it."""
    if not len(table):
        return "No compare-suite results yet.\n"
    lines = ["# Long-tailed classification: the methods side by side", "",
             "Test metrics in %, mean ± std over seeds [95% Student-t interval] (no std and no "
             "interval for a single seed: \"n=1, no interval\"). "
             "Per-class training counts are `n_max * imb_factor**(i/(C-1))` (long_tail) with `n_max` "
             "the largest count the runs recorded: what is left after the validation and statistic "
             "splits (4850 on CIFAR-10 rather than the literature's 5000), the imbalance ratio unchanged.", ""]
    keys = ["tag", "model", "scenario", "imb_factor", "selection"]
    for key, g in table.groupby(keys, sort=False):
        d = dict(zip(keys, key))
        first = g.iloc[0]
        n_max = fmt_num(first["n_max"]) if pd.notna(first["n_max"]) else "?"
        seeds = (f"{int(g['n_seeds'].max())} seed(s) per method" if g["n_seeds"].nunique() == 1
                 else "seeds per method differ (see the seeds column)")
        lines += [f"## {d['tag'] or '(untagged)'} · {d['model']} · {d['scenario']} · imb {d['imb_factor']:g} · "
                  f"{SELECTIONS[d['selection']]}", "",
                  f"{int(first['stage1_epochs'])} + {int(first['stage2_epochs'])} epochs, n_max {n_max}, "
                  f"val_per_class {fmt_num(first['val_per_class'])}, {seeds}"
                  + (f", test evaluated at {fmt_num(first['test_evaluations'])} epochs"
                     if d["selection"] == "peak" and pd.notna(first["test_evaluations"]) else "") + ".", ""]
        header = ["method", "seeds"] + [f"{label} (%)" for _, label in COMPARE_METRICS]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best = {m: (g[f"test_{m}_pct_mean"].min() if m in LOWER_IS_BETTER else g[f"test_{m}_pct_mean"].max())
                for m, _ in COMPARE_METRICS}
        for _, r in g.iterrows():
            cells = [str(r["method"]), str(int(r["n_seeds"]))]
            for m, _ in COMPARE_METRICS:
                text = r[f"test_{m}_pct"]
                cells.append(f"**{text}**" if np.isfinite(r[f"test_{m}_pct_mean"])
                             and r[f"test_{m}_pct_mean"] == best[m] and len(g) > 1 else text)
            lines.append("| " + " | ".join(cells) + " |")
        if d["selection"] == "peak":
            lines += _peaks_in_stage1(g)
        lines.append("")
    return "\n".join(lines)


def _peaks_in_stage1(g: pd.DataFrame) -> list[str]:
    """The note under a best-test-epoch table: the methods whose best test epoch lay in stage 1
    for some seeds (before their stage 2 did anything)."""
    early = [f"{r['method']} ({round(r['peak_in_stage1'] * r['n_seeds'])}/{int(r['n_seeds'])} seeds)"
             for _, r in g.iterrows() if pd.notna(r.get("peak_in_stage1")) and r["peak_in_stage1"] > 0]
    return ["", "Best test epoch in stage 1 (over both stages, as LDAM-DRW's code counts it): "
            + ", ".join(early) + "."] if early else []


# ----------------------------------------------------------------------------------------------
# Everything at once

def run_notes(summary: pd.DataFrame) -> list[str]:
    """What is incomplete: runs that have not reached their last epoch."""
    inc = summary[~summary["complete"]]
    return [f"{len(inc)} run(s) not finished (left out of the means): "
            + ", ".join(f"{r.tag or '-'}/{r.exp_name}/{r.model}/{r.scenario}/seed{r.seed} "
                        f"(stage {2 if r.stage2_epochs_done else 1}, epoch "
                        f"{r.stage2_epochs_done or r.stage1_epochs_done})" for r in inc.itertuples())] if len(inc) else []


def build_tables(results_dir, notes: list | None = None) -> dict[str, pd.DataFrame]:
    """Read the CSVs under ``results_dir``; return ``rows``, ``summary``, ``agg``, ``best``,
    ``compare``, ``paired`` and ``ablation`` DataFrames (writes nothing)."""
    notes = notes if notes is not None else []
    rows = load_rows(results_dir, notes)
    summary = summarize_runs(rows)
    notes += run_notes(summary)
    agg = aggregate_seeds(summary)
    paired = paired_table(summary)
    return {"rows": rows, "summary": summary, "agg": agg, "best": best_configs(agg, notes=notes),
            "compare": compare_table(agg), "paired": paired, "ablation": ablation_table(agg, paired)}


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    atomic_write_text(path, df.to_csv(index=False))
    return path


def write_summary(results_dir="results", out_dir=None, verbose: bool = True) -> dict:
    """Build the tables and write them to ``out_dir`` (default ``results_dir``); returns the
    DataFrames, the written ``paths`` and the ``notes``."""
    notes: list[str] = []
    t = build_tables(results_dir, notes)
    out = Path(out_dir if out_dir is not None else results_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"summary": _write_csv(t["summary"], out / "summary_tuning.csv"),
             "agg": _write_csv(t["agg"], out / "summary_tuning_agg.csv"),
             "best": _write_csv(t["best"], out / "best_configs.csv"),
             "compare_csv": _write_csv(t["compare"], out / "compare_table.csv")}
    paths["paired_csv"] = _write_csv(t["paired"], out / "paired_differences.csv")
    paths["ablation_csv"] = _write_csv(t["ablation"], out / "ablation_table.csv")
    for name, text in (("compare_table", compare_markdown(t["compare"])),
                       ("paired_differences", paired_markdown(t["paired"])),
                       ("ablation_table", ablation_markdown(t["ablation"]))):
        paths[f"{name}_md"] = out / f"{name}.md"
        atomic_write_text(out / f"{name}.md", text)
    if verbose:
        print(format_report(t, notes))
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return {**t, "paths": paths, "notes": notes}


def format_report(t: dict, notes: list[str]) -> str:
    """A short text version: run counts, the best configurations, the comparison (final epoch)."""
    s = t["summary"]
    pct = lambda v: f"{100 * v:6.2f}" if pd.notna(v) else "     -"
    lines = [f"{len(s)} run(s), {int(s['complete'].sum())} complete, {len(t['agg'])} configuration(s), "
             f"tags: {', '.join(sorted(set(s['tag']))) or '(none)'}"]
    if len(t["best"]):
        lines += ["", "Best two-stage configuration per (profile, model, scenario), chosen on validation "
                  "macro-F1; test numbers at stage 2's best-by-validation epoch (%):",
                  f"  {'profile':<10}{'model':<11}{'scenario':<11}{'imb':>6}  {'variant':<32}{'seeds':>5}"
                  f"{'val F1':>8}{'test F1':>8}{'tail F1':>8}{'acc':>8}"]
        for r in t["best"].itertuples():
            lines.append(f"  {r.profile or '-':<10}{r.model:<11}{r.scenario:<11}{r.imb_factor:>6g}  {r.variant:<32}"
                         f"{r.n_seeds:>5}{pct(r.s2_best_val_macro_f1_mean):>8}{pct(r.s2_best_test_macro_f1_mean):>8}"
                         f"{pct(r.s2_best_test_tail_macro_f1_mean):>8}{pct(r.s2_best_test_acc_mean):>8}")
    p = t["paired"]
    p = p[(p["split"] == "test") & p["comparison"].isin(("vs_control", "stage2_vs_stage1"))] if len(p) else p
    if len(p):
        lines += ["", "Paired differences, test at stage 2's last epoch (pp; mean ± std [95% interval], wins):"]
        several = p.duplicated([*PAIR_GROUP, "comparison", "metric"], keep=False)  # configurations of one cell
        for r, name_configs in zip(p.itertuples(), several):
            configs = f"  (configs {str(r.treated_config)[:8]} / {str(r.reference_config)[:8]})" if name_configs else ""
            lines.append(f"  {r.profile or '-':<10}{r.model:<11}{r.scenario:<11}{r.imb_factor:>6g}  "
                         f"{COMPARISONS[r.comparison]:<44}{r.metric:<14}{r.interval}{configs}")
    a = t["ablation"]
    if len(a):
        lines += ["", "Ablation variants (does the variant close the gap to drw? chosen on validation, "
                  "checked on test):"]
        for r in a[a["kind"] == "variant"].itertuples():
            lines.append(f"  {r.profile or '-':<10}{r.model:<11}{r.scenario:<11}{r.variant:<28}"
                         f"vs drw, test macro-F1 {r.vs_drw_test_macro_f1}: {r.closes_gap}")
    c = t["compare"]
    if len(c):
        shown = COMPARE_METRICS[:3]  # the rest are in compare_table.md
        lines += ["", "Methods, test metrics at stage 2's last epoch (%, mean ± std [95% interval] over seeds):"]
        for key, g in c[c["selection"] == "final"].groupby(["tag", "model", "scenario", "imb_factor"], sort=False):
            lines.append(f"  {key[0]} {key[1]} {key[2]} imb {key[3]:g}")
            cols = ["method", "n_seeds"] + [f"test_{m}_pct" for m, _ in shown]
            text = g[cols].rename(columns={f"test_{m}_pct": label for m, label in shown}).to_string(index=False)
            lines += ["    " + line for line in text.splitlines()]
    if notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in notes]
    return "\n".join(lines)


HELP = """\
Tables from the run files under --results (every results_*.csv, searched in sub-folders too,
and the .json beside each). Unfinished runs are listed but left out of every mean. Metrics are
mean ± std over seeds with a 95% interval; a configuration of one seed has no interval.

Writes into --out (default: the results folder):
  summary_tuning.csv             one row per run
  summary_tuning_agg.csv         one row per configuration: mean, std, 95% interval over seeds
  best_configs.csv               the best two-stage configuration, chosen on validation macro-F1
  compare_table.csv, .md         the methods side by side, best test macro-F1 first
  paired_differences.csv, .md    two-stage minus its control, stage 2 minus stage 1, and more
  ablation_table.csv, .md        each ablation variant against the default run and against drw

example:
  python summary_tuning.py --results results --out results
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument("--results", default="results", help="folder scanned recursively for results_*.csv (default: results)")
    p.add_argument("--out", default=None, help="folder for the tables (default: the results folder)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    why_not = args.out and cli.unwritable_folder(args.out)  # without --out, the results folder, checked when read
    try:
        if why_not:
            raise NotADirectoryError(f"--out {args.out}: {why_not}; give a folder you can write to")
        write_summary(args.results, args.out, verbose=not args.quiet)
    except OSError as e:  # no results, or a folder that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
