"""Tables from the per-run result CSVs: one row per run, mean ± std per configuration over seeds,
the best two-stage configuration chosen on validation, and the methods' comparison table.

Reads only the ``results_*.csv`` files under ``--results`` (recursively): never the JSONs, never the
code's configs, so it works on a grid that is still running. A run whose CSV does not reach its
last epoch yet is listed in ``summary_tuning.csv`` (``complete=False``) but left out of every mean.

Writes, in ``--out`` (default: the results folder):

* ``summary_tuning.csv``: one row per run: tag, model, scenario, method, exp_name, ``variant``
  (``two_stage``, ``control``, the tuning point's label, or the method), every hyperparameter, the
  seed, and per stage (``s1_``/``s2_``) the ``final`` (last epoch) and ``best`` (epoch of maximal
  validation macro-F1) metrics on ``val`` and ``test``, e.g. ``s2_best_test_macro_f1``; and the
  stage-2 minus stage-1 ``delta_<final|best>_<split>_<metric>``. Metrics are fractions in [0, 1].
* ``summary_tuning_agg.csv``: one row per configuration (all settings but the seed): ``n_seeds``,
  ``seeds`` and ``<metric>_mean`` / ``<metric>_std`` (sample std, ddof=1; empty for one seed).
* ``best_configs.csv``: per (profile, model, scenario, imb_factor), the two-stage configuration
  (the baseline-suite default and the tuning points, never the control) with the highest
  **validation** macro-F1 (stage 2's best-by-validation epoch, mean over seeds), and its **test**
  numbers. The test set never takes part in the choice.
* ``compare_table.csv`` / ``compare_table.md``: for the compare suite, rows = methods, columns =
  test accuracy, macro-F1, tail macro-F1, many/medium/few accuracy in %, mean ± std over seeds, per
  (tag, model, scenario, imb_factor); at stage 2's last epoch (as the literature reports) and at its
  best-by-validation epoch.

``python summary_tuning.py --results results --out results``. As a library: ``load_rows``,
``summarize_runs``, ``aggregate_seeds``, ``best_configs``, ``compare_table``, ``write_summary``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from results_logger import SCALAR_METRICS, atomic_write_text, summarize_rows

RUN_GLOB = "results_*.csv"
SUITES = ("baseline", "tuning", "compare")
PROFILE_ORDER = ("literature", "full", "reduced", "quick", "smoke")  # most trusted first
CIFAR10_TRAIN_PER_CLASS = 5000
# columns that change from row to row; everything else in a run's CSV is its identity
ROW_COLUMNS = frozenset(("stage", "epoch", "global_epoch", "split", "lr", "train_loss", "seconds", "tau",
                         *SCALAR_METRICS))
PER_CLASS = re.compile(r"^(f1|acc|w)_(\d+)$")
NOT_CONFIG = ("run_id", "stage1_id", "seed")  # the configuration is the identity less these
# the stage-2 knobs that the tuning grid sweeps (run_all_models.TUNING_GRID), for labels
TUNED = ("stage2_lr", "min_weight", "max_weight", "stage2_focal_gamma", "dynamic_mode", "stage2_loss_type")
COMPARE_METRICS = (("acc", "test acc"), ("macro_f1", "macro-F1"), ("tail_macro_f1", "tail macro-F1"),
                   ("many_acc", "many acc"), ("medium_acc", "medium acc"), ("few_acc", "few acc"))
# display order of the compare table: issue 4's list; unknown methods follow alphabetically
METHOD_ORDER = ("ce", "focal", "rw", "cb_focal", "drw", "ldam_drw", "logit_adjust", "balanced_softmax",
                "crt", "tau_norm", "two_stage_ictta", "control")
GROUP_COLUMNS = ("tag", "suite", "profile", "model", "scenario", "imb_factor", "method", "exp_name",
                 "variant", "role")


# ----------------------------------------------------------------------------------------------
# Reading

def find_run_files(results_dir) -> list[Path]:
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {str(root)!r} does not exist")
    return sorted(p for p in root.rglob(RUN_GLOB) if p.is_file())


def read_run_csv(path) -> pd.DataFrame:
    """One run's CSV; an empty ``tag`` reads as "" (not NaN)."""
    df = pd.read_csv(path)
    if "tag" in df:
        df["tag"] = ["" if pd.isna(v) else str(v) for v in df["tag"]]
    return df


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
        key = (str(df["run_id"].iloc[0]), df["tag"].iloc[0] if "tag" in df else "")
        if key in frames:
            other, other_path = frames[key]
            notes.append(f"run {key[0]} (tag {key[1]!r}) found twice: kept the longer of {other_path} and {path}")
            if len(df) <= len(other):
                continue
        frames[key] = (df, path)
    if not frames:
        raise FileNotFoundError(f"no readable {RUN_GLOB} under {str(results_dir)!r}")
    root = Path(results_dir)
    out = []
    for df, path in frames.values():
        df = df.copy()
        df["source"] = str(path.relative_to(root))
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
    return [c for c in columns if c not in ROW_COLUMNS and c != "source" and not PER_CLASS.match(c)]


def num_classes(df: pd.DataFrame) -> int:
    """C = the number of per-class F1 columns that hold values."""
    return sum(1 for c in df.columns if c.startswith("f1_") and PER_CLASS.match(c) and df[c].notna().any())


def n_max_effective(n_max, val_per_class, C: int):
    """The largest class's training count: ``n_max`` if set, else what CIFAR-10 leaves after the
    validation split (5000 - val_per_class); None when it cannot be known (another dataset)."""
    if _plain(n_max) is not None:
        return int(n_max)
    if C == 10 and _plain(val_per_class) is not None:
        return CIFAR10_TRAIN_PER_CLASS - int(val_per_class)
    return None


def train_counts(scenario: str, imb_factor: float, n_max, val_per_class, C: int) -> list[int] | None:
    """Per-class training counts of a run, recomputed from its settings (not stored in the CSV)."""
    import data_loader  # imports torch: only when counts are asked for

    nm = n_max_effective(n_max, val_per_class, C)
    return None if nm is None else data_loader.class_counts(scenario, float(imb_factor), nm, C)


# ----------------------------------------------------------------------------------------------
# Labels

def split_tag(tag: str) -> tuple[str, str]:
    """``"<suite>-<profile>"`` -> (suite, profile); a tag of no known suite is ("", tag)."""
    suite, _, profile = str(tag).partition("-")
    return (suite, profile) if suite in SUITES else ("", str(tag))


def _g(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def tuning_label(ident: dict) -> str:
    """The tuning point as run_all_models names it: ``lr0.01-w1-8-g1.5-loss`` (+ ``-ce`` for CE)."""
    label = (f"lr{_g(ident.get('stage2_lr'))}-w{_g(ident.get('min_weight'))}-{_g(ident.get('max_weight'))}"
             f"-g{_g(ident.get('stage2_focal_gamma'))}-{ident.get('dynamic_mode')}")
    return label + ("-ce" if ident.get("stage2_loss_type") == "ce" else "")


def is_control(ident: dict) -> bool:
    """The same-budget control: our method with uniform weights and plain CE in stage 2."""
    return ident.get("exp_name") == "control" or (
        ident.get("method") == "two_stage_ictta" and ident.get("dynamic_mode") == "none"
        and ident.get("stage2_loss_type") == "ce")


def variant_and_role(ident: dict) -> tuple[str, str]:
    """``variant``: what a table row is called; ``role``: ``two_stage`` (the method at its default
    settings, or any untagged run of it), ``control``, ``tuning`` (a tuning point) or ``method``."""
    exp, method = str(ident.get("exp_name", "")), ident.get("method")
    if is_control(ident):
        return "control", "control"
    if exp.startswith("tune-"):
        return tuning_label(ident), "tuning"
    if exp == "baseline":
        return "two_stage", "two_stage"
    if method == "two_stage_ictta" and split_tag(ident.get("tag", ""))[0] != "compare":
        return "two_stage", "two_stage"
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
    return out


def config_id(ident: dict) -> str:
    d = {k: _plain(v) for k, v in ident.items() if k not in NOT_CONFIG}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def summarize_run(df: pd.DataFrame) -> dict:
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
    row.update(config_id=config_id(ident), num_classes=C,
               n_max_effective=n_max_effective(ident.get("n_max"), ident.get("val_per_class"), C),
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
    out = [summarize_run(df.sort_values(["stage", "epoch"], kind="stable")) for _, df in rows.groupby(key, sort=False)]
    summary = pd.DataFrame(out)
    order = ["tag", "model", "scenario", "imb_factor", "variant", "seed"]
    return summary.sort_values([c for c in order if c in summary], kind="stable", na_position="first") \
        .reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if re.match(r"^(s[12]_(final|best)_|delta_|s[12]_best_epoch$|s2_final_tau$)", c)
            and pd.api.types.is_numeric_dtype(df[c])]


# ----------------------------------------------------------------------------------------------
# Over seeds

def aggregate_seeds(summary: pd.DataFrame, complete_only: bool = True) -> pd.DataFrame:
    """One row per configuration: its settings, ``n_seeds``, ``seeds`` and every metric's
    ``_mean`` and ``_std`` over seeds (sample std, ddof=1: NaN for a single seed)."""
    df = summary[summary["complete"]] if complete_only else summary
    metrics = metric_columns(df)
    settings = [c for c in df.columns if c not in metrics and c not in
                (*NOT_CONFIG, "source", "complete", "stage1_epochs_done", "stage2_epochs_done",
                 "s1_best_selected_on", "s2_best_selected_on")]
    out = []
    for cid, g in df.groupby("config_id", sort=False):
        row = {c: g[c].iloc[0] for c in settings}
        seeds = sorted(int(s) for s in g["seed"])
        row.update(n_seeds=len(g), seeds=" ".join(map(str, seeds)))
        for c in metrics:
            v = g[c].astype(float)
            row[f"{c}_mean"] = v.mean()
            row[f"{c}_std"] = v.std(ddof=1) if v.notna().sum() > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out, columns=None if out else [*settings, "n_seeds", "seeds"])


# ----------------------------------------------------------------------------------------------
# Best configuration, chosen on validation

BEST_KEY = ("profile", "model", "scenario", "imb_factor")
SELECT_ON = "s2_best_val_macro_f1_mean"


def best_configs(agg: pd.DataFrame, by=BEST_KEY, notes: list | None = None) -> pd.DataFrame:
    """Per ``by`` group, the two-stage configuration with the highest validation macro-F1.

    Candidates are the baseline suite's default run and the tuning points (``role`` two_stage or
    tuning, of the baseline/tuning suites or untagged), pooled over their tags so that the tuning
    grid is compared with its default point. The score is stage 2's best-by-validation epoch's
    validation macro-F1, averaged over seeds (``SELECT_ON``); ties go to the first. Test numbers
    are reported, never used. A group without validation rows gets no choice (and a note).
    """
    notes = notes if notes is not None else []
    if not len(agg):
        return pd.DataFrame()
    cand = agg[agg["role"].isin(("two_stage", "tuning")) & agg["suite"].isin(("baseline", "tuning", ""))]
    rows = []
    for key, g in cand.groupby(list(by), sort=True, dropna=False):
        if SELECT_ON not in g or g[SELECT_ON].isna().all():
            notes.append(f"no validation macro-F1 for {dict(zip(by, key))}: no best configuration chosen "
                         "(val_per_class=0?); the test set is not used to choose")
            continue
        best = g.loc[g[SELECT_ON].idxmax()]
        row = {**dict(zip(by, key)), "n_candidates": len(g), "tag": best["tag"], "variant": best["variant"],
               "exp_name": best["exp_name"], "config_id": best["config_id"],
               **{k: best.get(k) for k in TUNED + ("ema_alpha", "stage1_epochs", "stage2_epochs")},
               "n_seeds": best["n_seeds"], "seeds": best["seeds"]}
        for c in [SELECT_ON, SELECT_ON.replace("_mean", "_std")] + [
                f"s2_{kind}_test_{m}_{s}" for kind in ("best", "final") for m, _ in COMPARE_METRICS
                for s in ("mean", "std")] + ["s1_final_test_macro_f1_mean", "delta_final_test_macro_f1_mean",
                                             "s2_best_epoch_mean"]:
            row[c] = best.get(c, float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# The methods side by side

SELECTIONS = {"final": "stage-2 last epoch", "best": "stage-2 best-by-validation epoch"}


def compare_table(agg: pd.DataFrame, suites=("compare",)) -> pd.DataFrame:
    """Rows = methods of the ``suites`` runs, per (tag, model, scenario, imb_factor) and selection
    (``final``: stage 2's last epoch, ``best``: its best-by-validation epoch); columns = the test
    metrics in %, ``<m>_pct_mean`` / ``<m>_pct_std`` and ``<m>_pct`` formatted "mean ± std"."""
    df = agg[agg["suite"].isin(suites)] if len(agg) else agg
    rows = []
    for _, r in df.iterrows():
        for sel in SELECTIONS:
            row = {k: r.get(k) for k in ("tag", "model", "scenario", "imb_factor")}
            row.update(selection=sel, method=r["variant"], n_seeds=r["n_seeds"], seeds=r["seeds"],
                       stage1_epochs=r.get("stage1_epochs"), stage2_epochs=r.get("stage2_epochs"),
                       n_max=r.get("n_max_effective"), val_per_class=r.get("val_per_class"))
            for m, _ in COMPARE_METRICS:
                mean, std = (100 * r.get(f"s2_{sel}_test_{m}_{s}", float("nan")) for s in ("mean", "std"))
                row[f"test_{m}_pct_mean"], row[f"test_{m}_pct_std"] = mean, std
                row[f"test_{m}_pct"] = fmt_mean_std(mean, std)
            rows.append(row)
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    out["_order"] = out["method"].map(lambda m: (rank.get(m, len(rank)), m))
    out["_sel"] = out["selection"].map(list(SELECTIONS).index)  # final first
    out = out.sort_values(["tag", "model", "scenario", "imb_factor", "_sel", "_order"], kind="stable")
    return out.drop(columns=["_order", "_sel"]).reset_index(drop=True)


def fmt_mean_std(mean, std, digits: int = 2) -> str:
    if mean is None or not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and np.isfinite(std) else "")


def compare_markdown(table: pd.DataFrame) -> str:
    """``compare_table`` as markdown: one table per (tag, model, scenario, imb_factor, selection),
    the best mean of each column in bold, with the recipe's facts above it."""
    if not len(table):
        return "No compare-suite results yet.\n"
    lines = ["# Long-tailed CIFAR-10: the methods side by side", "",
             "Test metrics in %, mean ± std over seeds (sample std; none for a single seed). "
             "Per-class training counts are `n_max * imb_factor**(i/(C-1))` (long_tail) with `n_max` "
             "what is left after the validation split: 4900 rather than the literature's 5000 at "
             "`val_per_class=100`, the imbalance ratio unchanged.", ""]
    keys = ["tag", "model", "scenario", "imb_factor", "selection"]
    for key, g in table.groupby(keys, sort=False):
        d = dict(zip(keys, key))
        first = g.iloc[0]
        n_max = _g(first["n_max"]) if pd.notna(first["n_max"]) else "?"
        seeds = (f"{int(g['n_seeds'].max())} seed(s) per method" if g["n_seeds"].nunique() == 1
                 else "seeds per method differ (see the seeds column)")
        lines += [f"## {d['tag'] or '(untagged)'} · {d['model']} · {d['scenario']} · imb {d['imb_factor']:g} · "
                  f"{SELECTIONS[d['selection']]}", "",
                  f"{int(first['stage1_epochs'])} + {int(first['stage2_epochs'])} epochs, n_max {n_max}, "
                  f"val_per_class {_g(first['val_per_class'])}, {seeds}.", ""]
        header = ["method", "seeds"] + [f"{label} (%)" for _, label in COMPARE_METRICS]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best = {m: g[f"test_{m}_pct_mean"].max() for m, _ in COMPARE_METRICS}
        for _, r in g.iterrows():
            cells = [str(r["method"]), str(int(r["n_seeds"]))]
            for m, _ in COMPARE_METRICS:
                text = r[f"test_{m}_pct"]
                cells.append(f"**{text}**" if np.isfinite(r[f"test_{m}_pct_mean"])
                             and r[f"test_{m}_pct_mean"] == best[m] and len(g) > 1 else text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


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
    """Read the CSVs under ``results_dir``; return ``rows``, ``summary``, ``agg``, ``best`` and
    ``compare`` DataFrames (writes nothing)."""
    notes = notes if notes is not None else []
    rows = load_rows(results_dir, notes)
    summary = summarize_runs(rows)
    notes += run_notes(summary)
    agg = aggregate_seeds(summary)
    return {"rows": rows, "summary": summary, "agg": agg, "best": best_configs(agg, notes=notes),
            "compare": compare_table(agg)}


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
    paths["compare_md"] = out / "compare_table.md"
    atomic_write_text(paths["compare_md"], compare_markdown(t["compare"]))
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
    ctl = t["agg"][t["agg"]["role"].isin(("two_stage", "control"))] if len(t["agg"]) else t["agg"]
    if len(ctl):
        lines += ["", "Two-stage vs same-budget control, test macro-F1 at the last epoch (%, mean ± std):"]
        for key, g in ctl.groupby(["tag", "model", "scenario", "imb_factor"], sort=True):
            vals = {r.role: fmt_mean_std(100 * r.s2_final_test_macro_f1_mean, 100 * r.s2_final_test_macro_f1_std)
                    for r in g.itertuples() if hasattr(r, "s2_final_test_macro_f1_mean")}
            lines.append(f"  {key[0] or '-':<16}{key[1]:<11}{key[2]:<11}{key[3]:>6g}  two-stage "
                         f"{vals.get('two_stage', '-'):<16} control {vals.get('control', '-')}")
    c = t["compare"]
    if len(c):
        lines += ["", "Methods, test metrics at stage 2's last epoch (%, mean ± std over seeds):"]
        for key, g in c[c["selection"] == "final"].groupby(["tag", "model", "scenario", "imb_factor"], sort=False):
            lines.append(f"  {key[0]} {key[1]} {key[2]} imb {key[3]:g}")
            cols = ["method", "n_seeds"] + [f"test_{m}_pct" for m, _ in COMPARE_METRICS]
            text = g[cols].rename(columns={f"test_{m}_pct": label for m, label in COMPARE_METRICS}).to_string(index=False)
            lines += ["    " + line for line in text.splitlines()]
    if notes:
        lines += ["", "Notes:"] + [f"  - {n}" for n in notes]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--results", default="results", help="folder scanned recursively for results_*.csv")
    p.add_argument("--out", default=None, help="folder for the tables (default: the results folder)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        write_summary(args.results, args.out, verbose=not args.quiet)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
