"""Figures and small tables for a report, from the per-run result CSVs and each run's JSON
beside its CSV (the training count and name of each class, and the confusion matrices).

Reads the ``results_*.csv`` files under ``--results`` (via :mod:`summary_tuning`), so it plots
a grid that is still running: a model, scenario, method or seed that some run in the results has
and a figure lacks, or a run not finished yet, is left out and named in a note (printed, and
written in the figure). Only finished runs are plotted. Like :mod:`summary_tuning` it imports no
training code (nor torch): what it knows of models, scenarios and methods comes from the run files.
Models are shown in the order of :func:`model_order`, scenarios by name.
Intervals are 95% Student-t intervals over seeds (:func:`summary_tuning.interval95`); with one seed
a figure draws no error bar and says n=1. Paired differences pair runs by seed and shared stage 1.

The grid figures use one **profile** (``--profile``; default: the first of literature, full,
reduced, quick, smoke that has baseline or tuning runs) and its baseline and tuning suites:

* ``forest_paired_macro_f1.png`` (the headline): per model and scenario, the paired test
  difference two-stage minus control (and stage 2 minus stage 1) in macro-F1 and tail macro-F1,
  with its 95% interval and seeds won, zero line;
* ``bar_models_vs_scenario_macro_f1.png``: test macro-F1 at stage 2's last epoch, models x
  scenarios, two-stage vs its same-budget control, error bars = 95% intervals, n in the label;
* ``line_depth_trend_macro_f1.png``: macro-F1 and tail macro-F1 against the depth of the ResNets
  in the results, as their names give it (:func:`resnet_depth`), 95% intervals; each panel's
  title says whether the intervals support a trend (:func:`trend_verdict`);
* ``heatmap_macro_f1.png``: model x scenario, two-stage macro-F1 (colour on the fixed 0-100 scale)
  and its paired gain over the control (colour symmetric around 0), mean and interval per cell;
* ``tuning_sensitivity_macro_f1.png``: each one-knob tuning point's paired difference from the
  default run in validation and test macro-F1, per model and scenario;
* ``confusion/<scenario>_best.png``: row-normalised test confusion matrices (end of stage 1 and of
  stage 2, summed over seeds) of the best two-stage configuration of the scenario, all models, by
  **validation** macro-F1;
* per (model, scenario), the best two-stage configuration (baseline + tuning points, chosen on
  **validation** macro-F1 by :func:`summary_tuning.best_configs`), mean over its seeds:
  ``curves_best/<model>_<scenario>_acc_curves_best.png`` (accuracy, macro-F1, tail macro-F1 per
  epoch on val and test, stage boundary marked), ``class_weights/<model>_<scenario>_stage2_weights.png``
  (stage-2 class weights per epoch, one line per class coloured by its training count) and
  ``per_class_f1/<model>_<scenario>_f1_vs_count.png`` (per-class test F1, classes ordered by
  training count, stage 1 vs stage 2, and the control's stage 2);
* ``best_summary.csv`` (that choice, its test numbers with std and ci95, and the default run's
  paired difference from the control), ``best_hparams.csv`` (its settings) and
  ``class_counts_imb01.csv`` (per-class training counts at imbalance 0.01, per scenario, as the
  runs recorded them).

For compare-suite results: ``compare/<tag>_<model>_<scenario>_imb<f>.png``, methods x test metrics
(mean ± std [interval]), and ``confusion/<tag>_<model>_<scenario>_imb<f>_best.png``, the method
with the best validation macro-F1. For ablation runs (exp_name ``abl-...``):
``ablation/<profile>_<model>_<scenario>_imb<f>.png``, each variant's paired difference from the
default two-stage run and from drw, with the verdict of :func:`summary_tuning.gap_verdict`.

With many classes (more than ``MAX_NAMED_CLASSES``, e.g. CIFAR-100) no figure names classes.

``python plots.py --results results --out figures``; as a library, :func:`make_plots`.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: Agg canvas, no pyplot global state

import cli
import summary_tuning as st
from results_logger import atomic_write_text

ROLE_STYLE = {"two_stage": dict(color="tab:blue", label="two-stage (dynamic reweighting)"),
              "control": dict(color="tab:gray", label="same-budget control (stage 2: CE, uniform weights)")}
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13, "savefig.dpi": 130}
MACRO_F1_LABEL = "test macro-F1 (%), stage 2's last epoch"
MAX_NAMED_CLASSES = 20  # above this many classes, figures name no class (C = 100 stays readable)


# ----------------------------------------------------------------------------------------------
# Helpers

def _new_figure(w: float, h: float):
    """A figure and its body: axes, legends and colour bars go in the body, the title and the
    note on the figure, so that constrained layout stacks title, legend, axes and note without
    overlap (a figure-level "outside" legend would sit on the title)."""
    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.subfigures(1, 1)


def _title(fig: Figure, text: str) -> None:
    """The figure's title, each line wrapped to the figure's width."""
    width = int(fig.get_figwidth() * 10.5)  # characters per line at the title's font size
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in text.split("\n")))


def _note(fig: Figure, notes: list[str]) -> None:
    """The figure's notes (what is missing), under everything, inside the layout."""
    if notes:
        text = "\n".join(textwrap.fill("Note: " + n, int(fig.get_figwidth() * 13)) for n in notes)
        fig.supxlabel(text, fontsize=8.5, color="dimgray", ha="center")


def _save(fig: Figure, path: Path, paths: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    paths.append(path)
    return path


def _names(values) -> list:
    """The distinct names among ``values`` (no NaN), sorted."""
    return sorted({v for v in values if pd.notna(v)})


RESNET_NAME = re.compile(r"^resnet(\d+)$")


def resnet_depth(model: str) -> int | None:
    """The depth a ResNet's name gives (``resnet32`` -> 32), None for a model whose name is not
    ``resnet<N>`` (``simplecnn``). Read from the name, since the run files record no depth and
    the analysis builds no model; it is the name's number, not a count of layers."""
    m = RESNET_NAME.match(str(model))
    return int(m.group(1)) if m else None


def model_order(models) -> list[str]:
    """The distinct ``models``, as figures show them: those that are not ResNets by name, then the
    ResNets shallowest first (:func:`resnet_depth`)."""
    return sorted(_names(models), key=lambda m: (resnet_depth(m) is not None, resnet_depth(m) or 0, m))


def resnet_depths(models) -> dict[str, int]:
    """The ResNets among ``models`` and their depths, shallowest first."""
    return {m: resnet_depth(m) for m in model_order(models) if resnet_depth(m) is not None}


def _pct(v) -> float:
    return 100 * float(v) if v is not None and pd.notna(v) else float("nan")


def _seed_text(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def choose_profile(summary: pd.DataFrame, profile: str | None = None) -> str | None:
    """The profile the grid figures show: ``profile`` if given, else the first of
    ``summary_tuning.PROFILE_ORDER`` with baseline/tuning runs, else the untagged runs' tag."""
    grid = summary[summary["suite"].isin(("baseline", "tuning", ""))]
    have = list(dict.fromkeys(grid["profile"]))
    if profile is not None:
        if profile not in have:
            raise ValueError(f"--profile {profile}: the results hold no baseline or tuning runs of this "
                             f"profile; profiles that have some: {', '.join(repr(p) for p in have) or 'none'}")
        return profile
    for p in st.PROFILE_ORDER:
        if p in have:
            return p
    return have[0] if have else None


def _pick_imb(df: pd.DataFrame, notes: list) -> float | None:
    imbs = sorted(set(df["imb_factor"].dropna()))
    if not imbs:
        return None
    imb = 0.01 if 0.01 in imbs else max(imbs, key=lambda f: (df["imb_factor"] == f).sum())
    if len(imbs) > 1:
        notes.append(f"imbalance factors {', '.join(f'{f:g}' for f in imbs)} found; the grid figures show {imb:g}")
    return imb


def _one_per_cell(df: pd.DataFrame, keys: list[str], notes: list) -> pd.DataFrame:
    """One configuration per cell: where there are several (e.g. untagged runs with other
    settings), the one with most seeds, and a note."""
    df = df.sort_values("n_seeds", ascending=False, kind="stable")
    dup = df.duplicated(keys, keep="first")
    for _, r in df[dup].iterrows():
        notes.append(f"several configurations for {'/'.join(str(r[k]) for k in keys)}: showing the one with most seeds")
    return df[~dup]


def missing_notes(cells: pd.DataFrame, models, scenarios, roles=("two_stage", "control")) -> list[str]:
    """What is absent from the grid: models, scenarios, (model, scenario, role) cells, seeds."""
    notes = []
    have = {(r.model, r.scenario, r.role): r.n_seeds for r in cells.itertuples()}
    absent_models = [m for m in models if not any(k[0] == m for k in have)]
    absent_sc = [s for s in scenarios if not any(k[1] == s for k in have)]
    if absent_models:
        notes.append(f"no finished runs for model(s) {', '.join(absent_models)}")
    if absent_sc:
        notes.append(f"no finished runs for scenario(s) {', '.join(absent_sc)}")
    cells_missing = [f"{m}/{s}/{r}" for m in models for s in scenarios for r in roles
                     if m not in absent_models and s not in absent_sc and (m, s, r) not in have]
    if cells_missing:
        notes.append("missing: " + ", ".join(cells_missing))
    if have and max(have.values()) <= 1:
        notes.append("one seed per configuration: no error bars")
    elif have and len(set(have.values())) > 1:
        notes.append("seeds differ between cells: " + ", ".join(f"{k[0]}/{k[1]}/{k[2]} {v}" for k, v in have.items()
                                                                 if v != max(have.values())) + f" (others {max(have.values())})")
    return notes


# ----------------------------------------------------------------------------------------------
# Intervals on a figure

CI_TEXT = "95% Student-t interval over seeds (none for one seed)"


def _stat(r, prefix: str = "") -> dict:
    """A paired-table row (or its ``prefix``-ed columns) as :func:`summary_tuning.interval95`'s dict."""
    n = r.get(f"{prefix}n", 0)
    return {"n": int(n) if pd.notna(n) else 0,
            **{k: float(r.get(f"{prefix}{k}", np.nan)) for k in ("mean", "std", "ci95_lo", "ci95_hi")}}


def _dot(ax, y: float, s: dict, color: str, marker: str = "o", mfc=None, label=None) -> None:
    """A mean at (mean, y), its 95% interval as a horizontal line; only the dot when n < 2."""
    if not s["n"]:
        return
    if s["n"] >= 2:
        ax.hlines(y, s["ci95_lo"], s["ci95_hi"], color=color, lw=2.2, zorder=2)
    ax.plot([s["mean"]], [y], ls="none", marker=marker, ms=8, color=color, mfc=mfc or color, mew=1.5,
            zorder=3, label=label)


def _short(s: dict, wins: int | None = None) -> str:
    """``"+6.7 [-5.1, +18.4], wins 3/3"``, or ``"+6.7, n=1, no interval"``."""
    if not s["n"]:
        return "no pairs"
    text = f"{s['mean']:+.1f}" + (f" [{s['ci95_lo']:+.1f}, {s['ci95_hi']:+.1f}]" if s["n"] >= 2 else ", n=1, no interval")
    return text + (f", wins {wins}/{s['n']}" if wins is not None and s["n"] >= 2 else "")


def _zero_line(ax) -> None:
    ax.axvline(0, color="black", lw=1, zorder=1)
    ax.grid(axis="x", alpha=0.3)


def _right_text(ax, y: float, text: str, color: str = "black") -> None:
    """Text just right of the axes at data height ``y`` (inside the layout)."""
    ax.annotate(text, xy=(1.02, y), xycoords=("axes fraction", "data"), ha="left", va="center", fontsize=9,
                color=color, annotation_clip=False)


# ----------------------------------------------------------------------------------------------
# Grid figures: two-stage vs control

FOREST = {"vs_control": ("two-stage minus its same-budget control", dict(color="tab:blue", marker="o")),
          "stage2_vs_stage1": ("stage 2 minus stage 1 (two-stage run)", dict(color="dimgray", marker="D", mfc="white"))}


def plot_forest(paired: pd.DataFrame, models, scenarios, title: str, notes: list, path: Path, paths: list) -> Path:
    """The headline figure: per (model, scenario), the paired test difference in macro-F1 and tail
    macro-F1 with its 95% interval, two-stage minus control and stage 2 minus stage 1; zero line."""
    test = paired[(paired["split"] == "test") & paired["comparison"].isin(FOREST)]
    cells = [(m, s) for m in models for s in scenarios if ((test["model"] == m) & (test["scenario"] == s)).any()]
    fig, body = _new_figure(15, 2.6 + 0.62 * max(1, len(cells)))
    axes = body.subplots(1, len(st.PAIRED_METRICS), sharey=True, squeeze=False)[0]
    for ax, (metric, label) in zip(axes, st.PAIRED_METRICS):
        for i, (m, s) in enumerate(cells):
            for j, (comp, (text, style)) in enumerate(FOREST.items()):
                r = test[(test["model"] == m) & (test["scenario"] == s) & (test["comparison"] == comp)
                         & (test["metric"] == metric)]
                if len(r):
                    _dot(ax, i + 0.18 * (j - 0.5), _stat(r.iloc[0]), **style, label=text if i == 0 else None)
                    if comp == "vs_control":
                        _right_text(ax, i - 0.09, _short(_stat(r.iloc[0]), int(r.iloc[0]["wins"])), style["color"])
        _zero_line(ax)
        ax.set_xlabel(f"test {label}, difference (percentage points)")
        ax.set_title(label)
    n_pairs = {(m, s): int(test[(test["model"] == m) & (test["scenario"] == s) & (test["comparison"] == "vs_control")]
                           ["n"].max() if ((test["model"] == m) & (test["scenario"] == s)
                                           & (test["comparison"] == "vs_control")).any() else 0) for m, s in cells}
    axes[0].set_yticks(range(len(cells)), [f"{m} · {s.replace('_', '-')}\n({n_pairs[(m, s)]} pair"
                                           + ("s)" if n_pairs[(m, s)] != 1 else ")") for m, s in cells])
    axes[0].set_ylim(len(cells) - 0.5, -0.5)  # first row on top
    if not cells:
        axes[0].text(0.5, 0.5, "no paired runs", transform=axes[0].transAxes, ha="center", color="dimgray")
    else:
        body.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=2, frameon=False)
    _title(fig, title)
    _note(fig, notes + [f"lines: {CI_TEXT}; pairs share the seed and the stage-1 checkpoint; "
                        "right of each panel: two-stage minus control, mean [interval], seeds won"])
    return _save(fig, path, paths)


def plot_bars(cells: pd.DataFrame, models, scenarios, title: str, notes: list, path: Path, paths: list) -> Path:
    """Test macro-F1 per model and scenario, two-stage and control; error bars = 95% intervals."""
    fig, body = _new_figure(4.2 + 1.6 * len(models) * len(scenarios) / 2, 5.4)
    axes = body.subplots(1, len(scenarios), sharey=True, squeeze=False)[0]
    width = 0.38
    for ax, sc in zip(axes, scenarios):
        x = np.arange(len(models))
        for j, role in enumerate(("two_stage", "control")):
            d = cells[(cells["scenario"] == sc) & (cells["role"] == role)].set_index("model")
            mean = np.array([_pct(d["s2_final_test_macro_f1_mean"].get(m)) for m in models])
            half = np.array([_pct(d["s2_final_test_macro_f1_ci95"].get(m)) for m in models])
            n = [st.metric_n(d.loc[m], "s2_final_test_macro_f1") if m in d.index else 0 for m in models]
            pos = x + (j - 0.5) * width
            bars = ax.bar(pos, np.nan_to_num(mean), width, color=ROLE_STYLE[role]["color"], edgecolor="black",
                          linewidth=0.5, label=ROLE_STYLE[role]["label"] if sc == scenarios[0] else None)
            has = np.isfinite(half)  # one seed: no interval, no error bar
            ax.errorbar(pos[has], mean[has], yerr=half[has], fmt="none", ecolor="black", capsize=3, lw=1.2)
            for b, v, h, k in zip(bars, mean, half, n):
                top = (v if np.isfinite(v) else 0) + (h if np.isfinite(h) else 0) + 0.6
                ax.text(b.get_x() + b.get_width() / 2, top, f"{v:.1f}\nn={k}" if np.isfinite(v) else "missing",
                        ha="center", va="bottom", fontsize=8, rotation=90 if not np.isfinite(v) else 0,
                        color="black" if np.isfinite(v) else "dimgray")
        # stage 1 is shared by the two: its end, the starting point of both stage 2s
        ours = cells[(cells["scenario"] == sc) & (cells["role"] == "two_stage")]
        d1 = ours.set_index("model")["s1_final_test_macro_f1_mean"]  # the two-stage runs' own stage 1
        s1 = np.array([_pct(d1.get(m)) for m in models])
        ax.scatter(x[np.isfinite(s1)], s1[np.isfinite(s1)], marker="_", s=900, color="black", linewidths=2,
                   zorder=3, label="end of stage 1 (shared)" if sc == scenarios[0] else None)
        if not (cells["scenario"] == sc).any():
            ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center", color="dimgray")
        ax.set_xticks(x, models)
        ax.set_title(sc.replace("_", "-"))
        ax.set_xlabel("model")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(MACRO_F1_LABEL)
    tops = [_pct(a) + (_pct(b) if pd.notna(b) else 0) for a, b in
            zip(cells["s2_final_test_macro_f1_mean"], cells["s2_final_test_macro_f1_ci95"])]
    top = np.nanmax(tops + [_pct(v) for v in cells["s1_final_test_macro_f1_mean"]] + [1])
    axes[0].set_ylim(0, top * 1.2 + 4)
    body.legend(loc="outside upper center", ncol=3, frameon=False)
    _title(fig, title)
    _note(fig, notes + [f"error bars: {CI_TEXT}; n = seeds"])
    return _save(fig, path, paths)


def trend_verdict(points: dict[str, dict]) -> str:
    """What the intervals of one series (model -> ``interval95`` dict) allow one to say."""
    have = {m: s for m, s in points.items() if s["n"]}
    if len(have) < 2:
        return "fewer than 2 depths with results: no trend"
    if any(s["n"] < 2 for s in have.values()):
        return "one seed at some depth: no interval, no trend can be claimed"
    below = [(a, b) for a in have for b in have if have[a]["ci95_hi"] < have[b]["ci95_lo"]]
    if not below:
        return "all 95% intervals overlap: these data show no depth trend"
    return "intervals apart (no correction for several pairs): " + ", ".join(f"{a} < {b}" for a, b in below)


def plot_depth(cells: pd.DataFrame, models, scenarios, title: str, notes: list, path: Path, paths: list) -> Path:
    """Macro-F1 and tail macro-F1 against the depth of the ResNets among ``models`` (as their names
    give it), 95% intervals, the seeds per depth under each tick; each panel's title says whether
    the two-stage macro-F1's intervals show a trend."""
    depth = resnet_depths(models)
    fig, body = _new_figure(12, 5.6)
    axes = body.subplots(1, len(scenarios), sharey=True, squeeze=False)[0]
    lines = {("macro_f1", "two_stage"): dict(color="tab:blue", ls="-", marker="o"),
             ("tail_macro_f1", "two_stage"): dict(color="tab:orange", ls="-", marker="s"),
             ("macro_f1", "control"): dict(color="tab:blue", ls="--", marker="o", mfc="white"),
             ("tail_macro_f1", "control"): dict(color="tab:orange", ls="--", marker="s", mfc="white")}
    names = dict(st.PAIRED_METRICS)
    for ax, sc in zip(axes, scenarios):
        verdict, seeds = "no finished ResNet runs", {}
        for (metric, role), style in lines.items():
            d = cells[(cells["scenario"] == sc) & (cells["role"] == role)].set_index("model")
            pts = {m: st.level(d.loc[m], f"s2_final_test_{metric}") for m in depth if m in d.index}
            if not pts:
                continue
            if (metric, role) == ("macro_f1", "two_stage"):
                verdict = trend_verdict(pts)
                seeds = {m: s["n"] for m, s in pts.items()}
            nan = {"mean": np.nan, "ci95_hi": np.nan}  # a depth without runs breaks the line
            xs = np.array(list(depth.values()))
            ys = np.array([pts.get(m, nan)["mean"] for m in depth])
            es = np.array([pts.get(m, nan)["ci95_hi"] - pts.get(m, nan)["mean"] for m in depth])
            ax.plot(xs, ys, lw=1.8, ms=7, **style, label=f"{names[metric]}, {'two-stage' if role == 'two_stage' else 'control'}")
            has = np.isfinite(es)
            ax.errorbar(xs[has], ys[has], yerr=es[has], fmt="none", ecolor=style["color"], capsize=3, lw=1.2)
        ax.set_xticks(list(depth.values()), [f"{m}\n{d}\nn={seeds.get(m, 0)}" for m, d in depth.items()])
        ax.set_xlim(min(depth.values()) - 3, max(depth.values()) + 3)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no finished ResNet runs", transform=ax.transAxes, ha="center", color="dimgray")
        ax.set_title(f"{sc.replace('_', '-')}\n{textwrap.fill('two-stage macro-F1: ' + verdict, 55)}", fontsize=10.5)
        ax.set_xlabel("depth: the number in the model's name (resnet<depth>)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test F1 (%), stage 2's last epoch")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    if handles:
        body.legend(handles, labels, loc="outside upper center", ncol=4, frameon=False)
    _title(fig, title)
    _note(fig, notes + [f"error bars: {CI_TEXT}; n = seeds of the two-stage runs (no bar for n = 1); points of "
                        "different depths are separate runs (unpaired)"])
    return _save(fig, path, paths)


def plot_heatmap(cells: pd.DataFrame, paired: pd.DataFrame, models, scenarios, title: str, notes: list, path: Path,
                 paths: list) -> Path:
    """Left: two-stage test macro-F1, colour on the fixed 0-100% scale. Right: its paired
    difference from the control, colour symmetric around 0; each cell says mean and interval."""
    ours = cells[cells["role"] == "two_stage"].set_index(["model", "scenario"])
    vs = paired[(paired["comparison"] == "vs_control") & (paired["split"] == "test")
                & (paired["metric"] == "macro_f1")].set_index(["model", "scenario"])
    levels = [[st.level(ours.loc[(m, s)], "s2_final_test_macro_f1") if (m, s) in ours.index else {"n": 0}
              for s in scenarios] for m in models]
    diff = [[_stat(vs.loc[(m, s)]) if (m, s) in vs.index else {"n": 0} for s in scenarios] for m in models]
    fig, body = _new_figure(4.6 + 2.6 * len(scenarios), 1.8 + 0.8 * len(models))
    axes = body.subplots(1, 2, squeeze=False)[0]
    grid = lambda stats: np.array([[s["mean"] if s["n"] else np.nan for s in row] for row in stats])
    gain = grid(diff)
    lim = float(max([1.0, *np.ceil(np.abs(gain[np.isfinite(gain)]))]))  # a colour range, never empty
    panels = ((axes[0], levels, "viridis", 0, 100, "two-stage test macro-F1 (%)",
               "macro-F1 (%), fixed scale 0 to 100"),
              (axes[1], diff, "RdBu", -lim, lim, "two-stage minus control, paired (pp)",
               f"difference (pp), symmetric scale ±{lim:g}"))
    for ax, stats, cmap, vmin, vmax, ttl, cbar in panels:
        data = grid(stats)
        cm = matplotlib.colormaps[cmap].with_extremes(bad="lightgray")
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(models)):
            for j in range(len(scenarios)):
                s = stats[i][j]
                if not s["n"]:
                    ax.text(j, i, "missing", ha="center", va="center", fontsize=9.5, color="dimgray")
                    continue
                frac = (s["mean"] - vmin) / (vmax - vmin)
                dark = frac < 0.55 if cmap == "viridis" else abs(frac - 0.5) > 0.3
                ax.text(j, i, _two_lines(s, 1) if cmap == "viridis" else _short(s).replace(" [", "\n["),
                        ha="center", va="center", fontsize=9, color="white" if dark else "black")
        ax.set_xticks(range(len(scenarios)), [s.replace("_", "-") for s in scenarios])
        ax.set_yticks(range(len(models)), models)
        ax.set_xlabel("scenario")
        ax.set_ylabel("model")
        ax.set_title(ttl)
        body.colorbar(im, ax=ax, label=cbar, shrink=0.9)
    _title(fig, title)
    _note(fig, notes + [f"cells: mean (± std) [{CI_TEXT}]"]
          + (["grey cells: no finished run"] if np.isnan(gain).any() else []))
    return _save(fig, path, paths)


def _knob_change(tuned, default) -> str:
    """What a tuning point changes from the default run, e.g. ``stage2_lr 0.01 -> 0.003``."""
    def show(r, k):
        return f"[{st.fmt_num(r['min_weight'])}, {st.fmt_num(r['max_weight'])}]" if k == "weights" else st.fmt_num(r[k])
    knobs = ["weights" if k in ("min_weight", "max_weight") else k for k in st.TUNED]
    changed = [k for k in dict.fromkeys(knobs) if show(tuned, k) != show(default, k)]
    return "; ".join(f"{k} {show(default, k)} → {show(tuned, k)}" for k in changed) or "(same settings)"


SPLIT_STYLE = {"val": ("validation", dict(color="tab:green", marker="s", mfc="white")),
               "test": ("test", dict(color="tab:blue", marker="o"))}


def plot_sensitivity(paired: pd.DataFrame, agg: pd.DataFrame, models, scenarios, title: str, notes: list,
                     path: Path, paths: list) -> Path | None:
    """Per (model, scenario): each one-knob tuning point's paired difference from the default
    two-stage run in validation and test macro-F1, with 95% intervals. Points that change more
    than one knob (a product grid) are counted in a note, not drawn."""
    tune = paired[(paired["comparison"] == "tuning_vs_default") & (paired["metric"] == "macro_f1")]
    panels = [(m, s) for m in models for s in scenarios if ((tune["model"] == m) & (tune["scenario"] == s)).any()]
    if not panels:
        return None
    by_config = agg.set_index("config_id")
    rows_of, skipped = {}, 0
    for m, s in panels:
        points = []
        for cid, g in tune[(tune["model"] == m) & (tune["scenario"] == s)].groupby("treated_config", sort=False):
            g = st.main_reference(g)
            default = g["reference_config"].iloc[0]  # the default run this point was paired with
            change = _knob_change(by_config.loc[cid], by_config.loc[default]) if default in by_config.index \
                else str(g["treated"].iloc[0])
            if ";" in change:
                skipped += 1
                continue
            points.append((change, g.set_index("split")))
        rows_of[(m, s)] = sorted(points, key=lambda p: p[0])
    height = max(len(p) for p in rows_of.values())
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, body = _new_figure(7.5 * ncols, 1.6 + nrows * (0.9 + 0.42 * height))
    axes = np.atleast_1d(body.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, key in zip(axes, panels):
        for i, (change, g) in enumerate(rows_of[key]):
            for j, (split, (text, style)) in enumerate(SPLIT_STYLE.items()):
                if split in g.index:
                    _dot(ax, i + 0.16 * (j - 0.5), _stat(g.loc[split]), **style, label=text if i == 0 else None)
        _zero_line(ax)
        ax.set_yticks(range(len(rows_of[key])), [c for c, _ in rows_of[key]])
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_title(f"{key[0]} · {key[1].replace('_', '-')}")
        ax.set_xlabel("macro-F1 minus the default run's (pp)")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    body.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=2, frameon=False)
    _title(fig, title)
    _note(fig, notes + [f"lines: {CI_TEXT}; each point paired with the default run of the same seed and stage 1"]
          + ([f"{skipped} tuning point(s) change more than one knob: not drawn (see paired_differences.csv)"]
             if skipped else []))
    return _save(fig, path, paths)


# ----------------------------------------------------------------------------------------------
# The best configuration's runs

def _runs_of(config_id: str, summary: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    sources = summary.loc[(summary["config_id"] == config_id) & summary["complete"], "source"]
    return rows[rows["source"].isin(set(sources))]


def _mean_by_epoch(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    g = runs.groupby(["stage", "epoch", "split"], sort=True)
    out = g[cols + ["global_epoch"]].mean()
    std = g[cols].std(ddof=1).add_suffix("_std")
    return out.join(std).reset_index().sort_values(["split", "stage", "epoch"])


def plot_curves(runs: pd.DataFrame, best: pd.Series, title: str, notes: list, path: Path, paths: list) -> Path:
    metrics = (("acc", "accuracy"), ("macro_f1", "macro-F1"), ("tail_macro_f1", "tail macro-F1"))
    curves = _mean_by_epoch(runs, [m for m, _ in metrics])
    n1 = int(best["stage1_epochs"])
    total = n1 + int(best["stage2_epochs"])
    fig, body = _new_figure(14, 4.8)
    axes = body.subplots(1, 3, sharex=True)
    for ax, (m, label) in zip(axes, metrics):
        for split, style in (("test", dict(color="tab:blue", ls="-")), ("val", dict(color="tab:green", ls="--"))):
            c = curves[curves["split"] == split]
            if not len(c):
                continue
            y, e = 100 * c[m].to_numpy(), 100 * c[f"{m}_std"].to_numpy()
            ax.plot(c["global_epoch"], y, marker="o", ms=4, lw=1.8, label=f"{split}", **style)
            if np.isfinite(e).any():
                ax.fill_between(c["global_epoch"], y - e, y + e, alpha=0.15, color=style["color"], lw=0)
        ax.axvline(n1 + 0.5, color="black", lw=1, ls=":", label="stage 1 | stage 2")
        be = best.get("s2_best_epoch_mean")
        if pd.notna(be):
            ax.axvline(n1 + be, color="tab:red", lw=1, ls="-.", alpha=0.7,
                       label="stage-2 best epoch by val macro-F1 (mean over seeds)")
        ax.set_title(label)
        ax.set_xlabel("epoch (stage 1 then stage 2)")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
        lo, hi = ax.get_ylim()
        ymax = hi + 0.12 * (hi - lo)  # headroom for the stage labels
        ax.set_ylim(lo, ymax)
        ax.set_xlim(0.5, total + 0.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        for x0, x1, text in ((0.5, n1 + 0.5, "stage 1"), (n1 + 0.5, total + 0.5, "stage 2")):
            ax.text((x0 + x1) / 2, ymax - 0.015 * (ymax - lo), text, ha="center", va="top", fontsize=9, color="dimgray", zorder=5,
                    bbox=dict(fc="white", ec="none", alpha=0.85, pad=1))
    handles, labels = axes[0].get_legend_handles_labels()
    body.legend(handles, labels, loc="outside upper center", ncol=4, frameon=False)
    _title(fig, title)
    _note(fig, notes + (["bands: ±1 std over seeds"] if runs["seed"].nunique() > 1 else []))
    return _save(fig, path, paths)


def _count_colors(counts):
    norm = matplotlib.colors.LogNorm(vmin=max(1, min(counts)), vmax=max(counts) * (1.0001 if min(counts) == max(counts) else 1))
    # viridis without its palest yellow, which is hard to see on white
    return norm, matplotlib.colors.ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 0.88, 256)))


def dataset_name(runs: pd.DataFrame) -> str:
    C = set(runs["num_classes"]) if len(runs) else {10}
    return "CIFAR-10" if C == {10} else f"{'/'.join(map(str, sorted(C)))}-class data"


def class_names(C: int, recorded: list[str] | None = None) -> list[str]:
    """The names of C classes: those the runs recorded (:func:`summary_tuning.class_names_of`),
    else ``class 0``, ``class 1``, ..."""
    if recorded is not None and len(recorded) == C:
        return [str(name) for name in recorded]
    return [f"class {c}" for c in range(C)]


def _draw_weights(ax, runs: pd.DataFrame, settings: pd.Series, counts, names: list) -> None:
    """Stage-2 class weights per epoch on ``ax`` (mean over the runs' seeds), one line per class
    coloured by its training count, and the weight bounds of ``settings`` as dotted lines."""
    C = len(counts)
    s2 = runs[(runs["stage"] == 2) & (runs["split"] == "test")]
    w = s2.groupby("epoch")[[f"w_{c}" for c in range(C)]].mean()
    norm, cmap = _count_colors(counts)
    named = C <= MAX_NAMED_CLASSES  # many classes: thin lines, the colour bar alone says which
    seen: dict[int, int] = {}  # classes of equal count share a colour: markers tell them apart
    for c in np.argsort(-np.asarray(counts), kind="stable"):
        k = seen[counts[c]] = seen.get(counts[c], -1) + 1
        ax.plot(w.index, w[f"w_{c}"], marker="osD^v<>ph*"[k % 10] if named else None, ms=5, lw=1.8 if named else 0.8,
                color=cmap(norm(counts[c])), label=f"{c} {names[c]} (n={counts[c]})" if named else None)
    for v, lab in ((settings.get("min_weight"), "min_weight"), (settings.get("max_weight"), "max_weight")):
        if pd.notna(v) and (len(w) == 0 or float(v) <= 2 * float(np.nanmax(w.to_numpy()))):  # a far cap: off the plot
            ax.axhline(float(v), color="black", ls=":", lw=1, label=f"{lab} = {float(v):g}")
    ax.set_xlabel("stage-2 epoch (the evaluated ones: the CSV logs the weights with each evaluation)")
    if len(w.index):
        ax.set_xticks(w.index)
    ax.grid(alpha=0.3)


def _count_colorbar(body, ax, counts) -> None:
    norm, cmap = _count_colors(counts)
    cb = body.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                       label="training images per class (log scale)", pad=0.01)
    cb.ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    cb.ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def plot_weights(runs: pd.DataFrame, best: pd.Series, counts, title: str, notes: list, path: Path, paths: list) -> Path:
    """Stage-2 class weights per epoch, one line per class coloured by its training count."""
    names = class_names(len(counts), st.class_names_of(runs))
    fig, body = _new_figure(10, 5.2)
    ax = body.subplots()
    _draw_weights(ax, runs, best, counts, names)
    ax.set_ylabel("class weight (multiplies the class's loss; unitless)")
    body.legend(*ax.get_legend_handles_labels(), loc="outside right upper",
                title="class (training images)" if len(counts) <= MAX_NAMED_CLASSES else None, fontsize=8.5)
    _count_colorbar(body, ax, counts)
    _title(fig, title)
    _note(fig, notes)
    return _save(fig, path, paths)


def plot_weights_side_by_side(panels: list[tuple[str, pd.DataFrame, pd.Series]], counts, title: str, notes: list,
                              path: Path, paths: list) -> Path:
    """The stage-2 class weights of several configurations, one panel each (``(label, runs,
    settings)``), on one weight axis."""
    names = class_names(len(counts), st.class_names_of(panels[0][1]))
    fig, body = _new_figure(7 * len(panels) + 3, 5.2)
    axes = body.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (label, runs, settings) in zip(axes, panels):
        _draw_weights(ax, runs, settings, counts, names)
        ax.set_title(f"{label}\nweights in [{settings.get('min_weight'):g}, {settings.get('max_weight'):g}]",
                     fontsize=10)
    axes[0].set_ylabel("class weight (multiplies the class's loss; unitless)")
    handles, labels = axes[0].get_legend_handles_labels()
    classes = [(h, lab) for h, lab in zip(handles, labels) if not lab.startswith(("min_weight", "max_weight"))]
    bound = matplotlib.lines.Line2D([], [], color="black", ls=":", lw=1)
    body.legend(*zip(*classes, (bound, "the panel's weight bounds")), loc="outside right upper",
                title="class (training images)" if len(counts) <= MAX_NAMED_CLASSES else None, fontsize=8.5)
    _count_colorbar(body, axes[-1], counts)
    _title(fig, title)
    _note(fig, notes)
    return _save(fig, path, paths)


def _class_ticks(ax, order, counts, names, axis: str = "x") -> None:
    """Class ticks in ``order``: name and training count for a few classes, every k-th rank's
    count for many (no per-class text at C = 100)."""
    C = len(order)
    if C <= MAX_NAMED_CLASSES:
        pos, labels = range(C), [f"{names[c]}\n{counts[c]}" for c in order]
    else:
        pos = range(0, C, max(1, C // 10))
        labels = [f"#{i}\n{counts[order[i]]}" for i in pos]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(list(pos), labels, fontsize=8.5 if C > 10 else 9.5,
                                                      rotation=0 if C <= 10 or C > MAX_NAMED_CLASSES else 45)


def plot_per_class_f1(runs: pd.DataFrame, control_runs: pd.DataFrame | None, counts, title: str, notes: list,
                      path: Path, paths: list) -> Path:
    """Per-class test F1 at the end of stage 1 and of stage 2 (and the control's stage 2), classes
    ordered by training count (head left, tail right); one column per class, so classes of equal
    count (head_tail) never hide each other."""
    C = len(counts)
    f_cols = [f"f1_{c}" for c in range(C)]

    def final(df, stage):
        d = df[(df["stage"] == stage) & (df["split"] == "test")]
        d = d[d["epoch"] == d["epoch"].max()]
        return 100 * d[f_cols].mean().to_numpy() if len(d) else None

    order = np.argsort(-np.asarray(counts), kind="stable")
    x = np.arange(C)
    s1, s2 = final(runs, 1), final(runs, 2)
    ctl = final(control_runs, 2) if control_runs is not None and len(control_runs) else None
    few = C > MAX_NAMED_CLASSES
    fig, body = _new_figure(10 if not few else 14, 5.8)
    ax = body.subplots()
    if s1 is not None and s2 is not None and not few:
        for i, c in enumerate(order):
            ax.annotate("", xy=(i, s2[c]), xytext=(i, s1[c]), arrowprops=dict(arrowstyle="->", color="tab:blue", alpha=0.5))
    size = 55 if not few else 14
    if s1 is not None:
        ax.scatter(x, s1[order], s=size, facecolor="white", edgecolor="black", zorder=3, label="end of stage 1 (CE)")
    if s2 is not None:
        ax.scatter(x, s2[order], s=size, color="tab:blue", zorder=4, label="end of stage 2 (two-stage)")
    if ctl is not None:
        ax.scatter(x + (0.25 if not few else 0), ctl[order], s=size, marker="x", color="tab:red", zorder=4,
                   label="end of stage 2 (same-budget control)")
    # a dotted line where the training count changes group (head_tail: head | tail)
    sorted_counts = np.asarray(counts)[order]
    for i in np.flatnonzero(np.diff(sorted_counts) != 0) if len(set(counts)) <= 3 else []:
        ax.axvline(i + 0.5, color="gray", ls=":", lw=1)
    _class_ticks(ax, order, counts, class_names(C, st.class_names_of(runs)))
    ax.set_xlim(-0.7, C - 0.3)
    ax.set_xlabel("class, ordered by training images (tick: " + ("name and count)" if not few else "rank and count)"))
    ax.set_ylabel("test F1 of the class (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3, axis="y")
    body.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncol=3, frameon=False)
    _title(fig, title)
    _note(fig, notes if ctl is not None else notes + ["no finished control run for this model and scenario"])
    return _save(fig, path, paths)


def load_confusions(config_id: str, summary: pd.DataFrame, results_dir: Path, notes: list) -> dict[str, np.ndarray]:
    """Test confusion matrices at the last epoch of each stage (``confusion_test`` in the run's
    JSON beside its CSV), summed over the configuration's finished runs. Where a run's JSON has no
    stage-1 matrix (one that reused a stage 1 before fe22112), it is read from the run of the same
    ``stage1_id`` that trained it. A stage is returned only when every run's matrix was found."""
    cache: dict[str, dict] = {}

    def matrices(source: str) -> dict:
        if source not in cache:
            path = (results_dir / source).with_suffix(".json")
            try:
                cache[source] = json.loads(path.read_text()).get("confusion_test") or {}
            except (OSError, ValueError):
                cache[source] = {}
        return cache[source]

    def stage1_of(run) -> list | None:
        trainers = summary.loc[summary["stage1_id"] == run["stage1_id"], "source"]
        return next((matrices(s)["stage1"] for s in [run["source"], *trainers] if "stage1" in matrices(s)), None)

    runs = summary[(summary["config_id"] == config_id) & summary["complete"]]
    found = {"stage1": [stage1_of(r) for _, r in runs.iterrows()],
             "stage2": [matrices(r["source"]).get("stage2") for _, r in runs.iterrows()]}
    out = {}
    for stage, mats in found.items():
        if mats and all(m is not None for m in mats):
            out[stage] = np.sum([np.asarray(m, dtype=float) for m in mats], axis=0)
        elif mats:
            lost = sum(m is None for m in mats)
            notes.append(f"config {config_id}: {stage} confusion matrix missing for {lost} of {len(mats)} run(s): "
                         f"{stage} not shown"
                         + (" (older code did not keep it when a run resumed from a stage-2 checkpoint)"
                            if stage == "stage1" else ""))
    return out


def plot_confusion(mats: dict[str, np.ndarray], recorded_names: list[str] | None, title: str, notes: list,
                   path: Path, paths: list) -> Path:
    """Row-normalised test confusion matrices (rows = true class, each row sums to 1) at the end
    of stage 1 and of stage 2, on one fixed colour scale from 0 to 1; classes named as the runs
    recorded them (``recorded_names``)."""
    stages = [s for s in ("stage1", "stage2") if s in mats]
    C = mats[stages[0]].shape[0]
    names = class_names(C, recorded_names)
    order = np.arange(C)  # the dataset's class order: CIFAR-LT's counts fall with the index
    side = 4.2 if C <= 12 else 6.5
    fig, body = _new_figure(1.2 + side * len(stages) + 1.2, side + 1.9)
    axes = body.subplots(1, len(stages), squeeze=False)[0]
    for ax, stage in zip(axes, stages):
        m = mats[stage]
        with np.errstate(invalid="ignore"):
            rows = m / m.sum(axis=1, keepdims=True)
        im = ax.imshow(np.ma.masked_invalid(rows), cmap=matplotlib.colormaps["Blues"].with_extremes(bad="lightgray"),
                       vmin=0, vmax=1, interpolation="nearest")
        if C <= 12:
            for i in range(C):
                for j in range(C):
                    if np.isfinite(rows[i, j]) and round(100 * rows[i, j]) >= 1:
                        ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=7.5,
                                color="white" if rows[i, j] > 0.6 else "black")
        labels = names if C <= MAX_NAMED_CLASSES else None
        step = 1 if labels else max(1, C // 10)
        ax.set_xticks(order[::step], labels if labels else order[::step], rotation=90 if labels else 0, fontsize=8.5)
        ax.set_yticks(order[::step], labels if labels else order[::step], fontsize=8.5)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"end of {stage.replace('stage', 'stage ')}, diagonal mean {100 * np.nanmean(np.diag(rows)):.1f}%",
                     fontsize=10.5)
    body.colorbar(im, ax=list(axes), label="share of the true class's test images\n(row-normalised; fixed scale 0 to 1)",
                  shrink=0.85)
    _title(fig, title)
    _note(fig, notes + (["cells: % of the row; empty where it rounds to 0"] if C <= 12 else []))
    return _save(fig, path, paths)


# ----------------------------------------------------------------------------------------------
# Compare suite

def _two_lines(s: dict, digits: int = 1) -> str:
    """:func:`summary_tuning.fmt_stat` on two lines: the mean (± std), then the interval or "n=1"."""
    return st.fmt_stat(s, digits).replace(" [", "\n[").replace(" (n=1", "\n(n=1")


def plot_compare(g: pd.DataFrame, title: str, notes: list, path: Path, paths: list) -> Path:
    """Methods x metrics: annotated mean ± std [95% interval]; colour = place in the column's
    range (darkest = best: the highest, or for ECE the lowest)."""
    metrics = st.COMPARE_METRICS
    stats = [[{"n": int(r["n_seeds"]), **{k: r[f"test_{m}_pct_{k}"] for k in ("mean", "std", "ci95_lo", "ci95_hi")}}
              for m, _ in metrics] for _, r in g.iterrows()]
    mean = np.array([[s["mean"] for s in row] for row in stats], dtype=float)
    lo, hi = np.nanmin(mean, axis=0), np.nanmax(mean, axis=0)
    rel = (mean - lo) / np.where(hi > lo, hi - lo, 1)
    lower_better = [j for j, (m, _) in enumerate(metrics) if m in st.LOWER_IS_BETTER]
    rel[:, lower_better] = 1 - rel[:, lower_better]  # darkest = best in every column (ECE: the lowest)
    fig, body = _new_figure(12, 2.4 + 0.75 * len(g))
    ax = body.subplots()
    # the lighter 80% of "Blues", so that black or white text stays readable on every cell
    cm = matplotlib.colors.ListedColormap(matplotlib.colormaps["Blues"](np.linspace(0, 0.8, 256))) \
        .with_extremes(bad="lightgray")
    im = ax.imshow(np.ma.masked_invalid(rel), cmap=cm, vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(stats):
        for j, s in enumerate(row):
            ax.text(j, i, _two_lines(s), ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(rel[i, j]) and rel[i, j] > 0.75 else "black")
    ax.set_xticks(range(len(metrics)), [f"{label} (%)" for _, label in metrics])
    ax.set_yticks(range(len(g)), [f"{m} (n={n})" for m, n in zip(g["method"], g["n_seeds"])])
    ax.set_xlabel("test metric at stage 2's last epoch (%), mean ± std over seeds [95% Student-t interval]")
    ax.set_ylabel("method (seeds)")
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    body.colorbar(im, ax=ax, label="place in column\n(0 worst, 1 best; ECE: lower is better)", shrink=0.9, pad=0.01)
    _title(fig, title)
    _note(fig, notes)
    return _save(fig, path, paths)


# ----------------------------------------------------------------------------------------------
# Ablation

def plot_ablation(paired: pd.DataFrame, table: pd.DataFrame, title: str, notes: list, path: Path,
                  paths: list) -> Path:
    """Per ablation variant, its paired difference in validation and test macro-F1 from the
    default two-stage run, from drw and from logit_adjust (when the group has them), with 95%
    intervals; the verdict of
    :func:`summary_tuning.gap_verdict` right of the drw panel."""
    variants = table[table["kind"] == "variant"]
    f1 = paired[paired["metric"] == "macro_f1"]
    refs = [r for r in st.ABLATION_REFERENCES if r == "default" or (table["kind"] == r).any()]
    fig, body = _new_figure(7 * len(refs), 2.6 + 0.6 * len(variants))
    axes = body.subplots(1, len(refs), sharey=True, squeeze=False)[0]
    for ax, ref in zip(axes, refs):
        ref_text = "the default two-stage run" if ref == "default" else ref
        mine = f1[f1["comparison"] == f"ablation_vs_{ref}"]
        for i, (_, v) in enumerate(variants.iterrows()):
            rows = st.main_reference(mine[mine["treated_config"] == v["config_id"]]).set_index("split")
            for j, (split, (text, style)) in enumerate(SPLIT_STYLE.items()):
                if split in rows.index:
                    _dot(ax, i + 0.16 * (j - 0.5), _stat(rows.loc[split]), **style, label=text if i == 0 else None)
            if ref == "drw":
                _right_text(ax, i, v["closes_gap"])
        _zero_line(ax)
        ax.set_title(f"variant minus {ref_text}" + ("  (right: closes the gap?)" if ref == "drw" else ""))
        ax.set_xlabel("macro-F1 difference (pp), paired by seed" + ("" if ref == "logit_adjust" else " and stage 1"))
    axes[0].set_yticks(range(len(variants)), [f"{v} (n={n})" for v, n in zip(variants["variant"], variants["n_seeds"])])
    axes[0].set_ylim(len(variants) - 0.5, -0.5)
    body.legend(*axes[0].get_legend_handles_labels(), loc="outside upper center", ncol=2, frameon=False)
    _title(fig, title)
    _note(fig, notes + [f"lines: {CI_TEXT}; right: closes the gap to drw? (mean paired difference >= 0 on "
                        "validation, then confirmed on test; no verdict from one seed)"])
    return _save(fig, path, paths)


def _ablation_figures(t: dict, out: Path, paths: list, notes: list) -> None:
    table = t["ablation"]
    if not len(table):
        return
    for key, g in table.groupby(list(st.PAIR_GROUP), sort=False, dropna=False):
        d = dict(zip(st.PAIR_GROUP, key))
        mine = t["paired"][np.logical_and.reduce([t["paired"][k] == v for k, v in d.items()])]
        gn = [f"{r.variant}: {r.n_seeds} seed(s)" for r in g[g["kind"] == "variant"].itertuples() if r.n_seeds < 2]
        what = f"{d['model']}, {d['scenario'].replace('_', '-')} (imbalance {d['imb_factor']:g})"
        stem = f"{d['profile'] or 'untagged'}_{d['model']}_{d['scenario']}_imb{d['imb_factor']:g}"
        plot_ablation(mine, g, f"Ablation of the two-stage method, {what}, profile {d['profile'] or '(untagged)'}",
                      gn, out / "ablation" / f"{stem}.png", paths)
        _chosen_weights_figure(t, g, what, out / "ablation" / f"{stem}_weights.png", paths, notes)


def _chosen_weights_figure(t: dict, g: pd.DataFrame, what: str, path: Path, paths: list, notes: list) -> None:
    """The stage-2 class weights of the default two-stage run beside the variant chosen on
    validation (:func:`summary_tuning.chosen_variant`), mean over seeds; where there is nothing
    to choose from (one variant, e.g. a run that confirms a choice made at another budget), beside
    that variant."""
    chosen, how = st.chosen_variant(g), "chosen on validation"
    default, variants = g[g["kind"] == "default"], g[g["kind"] == "variant"]
    if chosen is None and len(variants) == 1:
        chosen, how = variants.iloc[0], "the only variant here"
    if chosen is None or not len(default):
        notes.append(f"{path.name}: needs the default two-stage run and one variant, or a variant chosen "
                     "from several with at least two seeds each: skipped")
        return
    panels = []
    for label, r in (("default two-stage run", default.iloc[0]), (f"{how}: {chosen['variant']}", chosen)):
        runs = _runs_of(r["config_id"], t["summary"], t["rows"])
        settings = t["agg"].set_index("config_id").loc[r["config_id"]]
        n = int(r["n_seeds"])
        panels.append((f"{label} ({n} seed{'s' * (n != 1)})", runs, settings))
    counts = st.class_counts_of(panels[0][1])
    if counts is None:
        notes.append(f"{path.name}: training counts unknown (no run JSON beside the CSVs): skipped")
        return
    plot_weights_side_by_side(panels, counts, f"Stage-2 class weights per epoch, {what}", [], path, paths)


# ----------------------------------------------------------------------------------------------
# Everything

def make_plots(results_dir="results", out_dir="figures", profile: str | None = None, verbose: bool = True) -> dict:
    """Read the CSVs under ``results_dir`` (and, for confusion matrices, the runs' JSONs) and
    write every figure and table to ``out_dir``.

    Returns ``paths`` (everything written), ``notes`` (what is missing), and the ``best``,
    ``best_summary``, ``best_hparams`` and ``class_counts`` DataFrames."""
    notes: list[str] = []
    t = st.build_tables(results_dir, notes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    result = {"paths": paths, "notes": notes}
    with matplotlib.rc_context(STYLE):
        prof = choose_profile(t["summary"], profile)
        if prof is None:
            notes.append("no baseline or tuning runs: grid figures skipped")
        else:
            result.update(_grid_figures(t, prof, Path(results_dir), out, paths, notes))
        _compare_figures(t, Path(results_dir), out, paths, notes)
        _ablation_figures(t, out, paths, notes)
    remove_stale_files(out, paths, notes)
    if verbose:
        print(f"{len(paths)} file(s) written under {out}")
        for n in notes:
            print(f"note: {n}")
    return result


WRITTEN_LIST = ".plots_written"  # in the output folder: what the last call wrote there, one path a line


def remove_stale_files(out: Path, paths: list, notes: list) -> None:
    """Delete what the previous call wrote to ``out`` (its :data:`WRITTEN_LIST`) and this call did
    not (figures of runs no longer there, of another profile, ...), so that no stale figure sits
    beside fresh ones; then list this call's files. Files this script never wrote are left alone."""
    listing = out / WRITTEN_LIST
    before = set(listing.read_text().splitlines()) if listing.exists() else set()
    now = {Path(p).relative_to(out).as_posix() for p in paths if Path(p).is_relative_to(out)}
    inside = lambda rel: (out / rel).resolve().is_relative_to(out.resolve())  # an edited list reaches no further
    stale = sorted(rel for rel in before - now - {""} if inside(rel))
    for rel in stale:
        (out / rel).unlink(missing_ok=True)
        folder = (out / rel).parent
        while folder != out and folder.is_dir() and not any(folder.iterdir()):  # emptied sub-folders go too
            folder.rmdir()
            folder = folder.parent
    if stale:
        notes.append(f"removed {len(stale)} file(s) an earlier call wrote here and this one did not: "
                     + ", ".join(stale[:6]) + (", ..." if len(stale) > 6 else ""))
    atomic_write_text(listing, "".join(f"{rel}\n" for rel in sorted(now)))


def _compare_figures(t: dict, root: Path, out: Path, paths: list, notes: list) -> None:
    """Per compare case: the methods x metrics table, and the confusion matrices of the method
    with the best validation macro-F1."""
    compare, agg = t["compare"], t["agg"]
    if not len(compare):
        return
    final = compare[compare["selection"] == "final"]
    summary = t["summary"]
    methods = _names(summary.loc[summary["suite"] == "compare", "variant"])  # of any compare run, finished or not
    best = st.best_configs(agg, by=("tag", "model", "scenario", "imb_factor"), notes=notes,
                           candidates=st.METHOD_CANDIDATES).set_index(["tag", "model", "scenario", "imb_factor"])
    for key, g in final.groupby(["tag", "model", "scenario", "imb_factor"], sort=False):
        gn = []
        if (g["n_seeds"] < 3).any():
            gn.append("fewer than 3 seeds: " + ", ".join(f"{m} {n}" for m, n in zip(g["method"], g["n_seeds"]) if n < 3))
        absent = [m for m in methods if m not in set(g["method"])]
        if absent:
            gn.append("no finished runs for " + ", ".join(absent))
        notes.extend(f"{key[0]} {key[1]}/{key[2]}: {n}" for n in gn)
        stem = f"{key[0] or 'untagged'}_{key[1]}_{key[2]}_imb{key[3]:g}"
        data = dataset_name(agg[(agg["tag"] == key[0]) & (agg["model"] == key[1])])
        case = f"{key[2].replace('_', '-')} {data} (imbalance {key[3]:g}), {key[1]}, {key[0]}"
        plot_compare(g, f"Methods on {case}", gn, out / "compare" / f"{stem}.png", paths)
        if key not in best.index:
            notes.append(f"{key[0]} {key[1]}/{key[2]}: no registry method among its runs (named variants "
                         "only), so no confusion figure of the best one")
            continue
        b = best.loc[key]
        _confusion_figure(b, t, root, f"{case}: best of {int(b['n_candidates'])} methods by validation "
                          f"macro-F1, {b['variant']}", out / "confusion" / f"{stem}_best.png", paths, notes)


def _confusion_figure(best: pd.Series, t: dict, root: Path, what: str, path: Path, paths: list,
                      notes: list) -> None:
    summary = t["summary"]
    mine: list[str] = []
    mats = load_confusions(best["config_id"], summary, root, mine)
    notes.extend(mine)
    if "stage2" not in mats:  # the final model's matrix is the point of the figure
        notes.append(f"{path.name}: no stage-2 confusion matrix in the runs' JSONs: figure skipped")
        return
    names = st.class_names_of(_runs_of(best["config_id"], summary, t["rows"]))
    plot_confusion(mats, names, f"Test confusion matrices, row-normalised, summed over {_seed_text(int(best['n_seeds']))}\n"
                   f"{what}", mine, path, paths)


def pairs_of_cells(paired: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The paired rows of the configurations drawn: each two-stage cell against its control cell
    and its own stage 1, and the tuning points against it (not another configuration of the cell,
    e.g. GPU runs beside the CPU grid, nor the compare suite's ``two_stage_ictta``)."""
    ours = set(cells.loc[cells["role"] == "two_stage", "config_id"])
    controls = set(cells.loc[cells["role"] == "control", "config_id"])
    comp, treated, reference = paired["comparison"], paired["treated_config"], paired["reference_config"]
    keep = (((comp == "vs_control") & treated.isin(ours) & reference.isin(controls))
            | ((comp == "stage2_vs_stage1") & treated.isin(ours))
            | ((comp == "tuning_vs_default") & reference.isin(ours)))
    return paired[keep]


def _grid_figures(t: dict, prof: str, root: Path, out: Path, paths: list, notes: list) -> dict:
    summary, agg = t["summary"], t["agg"]
    study = agg[agg["suite"].isin(("baseline", "tuning", "")) & (agg["profile"] == prof)] if len(agg) else agg
    all_runs = summary[summary["suite"].isin(("baseline", "tuning", "")) & (summary["profile"] == prof)]
    label = f"profile {prof!r}" if prof else "untagged runs"
    if not len(study):
        notes.append(f"{label}: no finished runs yet ({len(all_runs)} running): grid figures skipped")
        return {}
    gnotes: list[str] = []
    imb = _pick_imb(study, gnotes)
    study = study[study["imb_factor"] == imb]
    paired = t["paired"][(t["paired"]["profile"] == prof) & (t["paired"]["imb_factor"] == imb)]
    inc = all_runs[~all_runs["complete"]]
    if len(inc):
        gnotes.append(f"{len(inc)} run(s) still running, not shown: " + ", ".join(
            f"{r.exp_name}/{r.model}/{r.scenario}/seed{r.seed}" for r in inc.itertuples()))
    cells = _one_per_cell(study[study["role"].isin(("two_stage", "control"))], ["model", "scenario", "role"], gnotes)
    paired = pairs_of_cells(paired, cells)
    # what any run in the results has, finished or not: the figures name what they lack of it
    models, scenarios = model_order(summary["model"]), _names(summary["scenario"])
    fig_notes = gnotes + missing_notes(cells, models, scenarios)
    notes.extend(f"{label}: {n}" for n in fig_notes)
    sub = f"{dataset_name(study)}, imbalance {imb:g}, {label}"
    plot_forest(paired, models, scenarios, f"Paired test differences per model and scenario ({sub})", fig_notes,
                out / "forest_paired_macro_f1.png", paths)
    plot_bars(cells, models, scenarios, f"Test macro-F1 per model and scenario: two-stage vs same-budget control\n({sub})",
              fig_notes, out / "bar_models_vs_scenario_macro_f1.png", paths)
    resnets = list(resnet_depths(models))
    if resnets:
        depth_notes = gnotes + missing_notes(cells[cells["model"].isin(resnets)], resnets, scenarios)
        plot_depth(cells, resnets, scenarios, f"Macro-F1 and tail macro-F1 against ResNet depth ({sub})",
                   depth_notes, out / "line_depth_trend_macro_f1.png", paths)
    else:
        notes.append(f"{label}: no ResNet (a model named resnet<depth>) in the results: depth figure skipped")
    plot_heatmap(cells, paired, models, scenarios, f"Test macro-F1, stage 2's last epoch ({sub})", fig_notes,
                 out / "heatmap_macro_f1.png", paths)
    plot_sensitivity(paired, study, models, scenarios, f"Tuning sensitivity: each knob's effect on macro-F1 "
                     f"against the default run ({sub})", gnotes, out / "tuning_sensitivity_macro_f1.png", paths)
    for _, b in st.best_configs(study, by=("scenario", "imb_factor"), notes=notes).iterrows():
        model = study.loc[study["config_id"] == b["config_id"], "model"].iloc[0]
        n = int(b["n_candidates"])
        _confusion_figure(b, t, root, f"{b['scenario'].replace('_', '-')} ({sub}): best of {n} two-stage "
                          f"configuration{'s' if n != 1 else ''} by validation macro-F1, {model} {b['variant']}",
                          out / "confusion" / f"{b['scenario']}_best.png", paths, notes)
    result = _best_config_figures(t, study, cells, paired, prof, imb, out, paths, notes)
    counts = class_counts_table(t["rows"][t["rows"]["source"].isin(set(all_runs["source"]))], scenarios, notes)
    atomic_write_text(out / "class_counts_imb01.csv", counts.to_csv(index=False))
    paths.append(out / "class_counts_imb01.csv")
    return {**result, "class_counts": counts}


def _best_config_figures(t: dict, study, cells, paired, prof: str, imb: float, out: Path, paths: list,
                         notes: list) -> dict:
    """Per (model, scenario), the best two-stage configuration by validation macro-F1: learning
    curves, class weights, per-class F1; and the tables best_summary and best_hparams."""
    summary, rows = t["summary"], t["rows"]
    best = st.best_configs(study, by=("model", "scenario", "imb_factor"), notes=notes)
    vs_control = paired[(paired["comparison"] == "vs_control") & (paired["split"] == "test")
                        & (paired["metric"] == "macro_f1")].set_index(["model", "scenario"])
    best_rows = []
    for _, b in best.iterrows():
        runs = _runs_of(b["config_id"], summary, rows)
        ctl_cell = cells[(cells["model"] == b["model"]) & (cells["scenario"] == b["scenario"]) & (cells["role"] == "control")]
        ctl = ctl_cell.iloc[0] if len(ctl_cell) else None
        ctl_runs = _runs_of(ctl["config_id"], summary, rows) if ctl is not None else None
        n_cand = int(b["n_candidates"])
        what = (f"{b['model']}, {b['scenario'].replace('_', '-')} (imbalance {imb:g}), best of {n_cand} two-stage "
                f"configuration{'s' if n_cand != 1 else ''} by validation macro-F1: {b['variant']}, "
                f"mean over {_seed_text(int(b['n_seeds']))}")
        bn = [] if int(b["n_seeds"]) > 1 else ["one seed: no spread shown"]
        stem = f"{b['model']}_{b['scenario']}"
        plot_curves(runs, b, f"Learning curves of the best configuration\n{what}", bn,
                    out / "curves_best" / f"{stem}_acc_curves_best.png", paths)
        counts = st.class_counts_of(runs)
        if counts is None:
            notes.append(f"{stem}: training counts unknown (no run JSON beside the CSVs): per-class figures skipped")
        else:
            plot_weights(runs, b, counts, f"Stage-2 class weights per epoch\n{what}", bn,
                         out / "class_weights" / f"{stem}_stage2_weights.png", paths)
            plot_per_class_f1(runs, ctl_runs, counts, f"Per-class test F1, stage 1 vs stage 2\n{what}",
                              bn, out / "per_class_f1" / f"{stem}_f1_vs_count.png", paths)
        r = {"profile": prof, "model": b["model"], "scenario": b["scenario"], "imb_factor": imb,
             "chosen_variant": b["variant"], "tag": b["tag"], "exp_name": b["exp_name"],
             "n_candidates": n_cand, "n_seeds": b["n_seeds"], "seeds": b["seeds"],
             **{f"val_macro_f1_{k}": b[f"s2_best_val_macro_f1_{k}"] for k in ("mean", "std", "ci95")}}
        for m, _ in st.COMPARE_METRICS:
            r.update({f"test_{m}_{k}": b.get(f"s2_best_test_{m}_{k}", np.nan) for k in ("mean", "std", "ci95")})
        for k in ("mean", "std", "ci95"):  # every level with its spread, never a bare mean
            r[f"test_final_macro_f1_{k}"] = b.get(f"s2_final_test_macro_f1_{k}", np.nan)
            r[f"stage1_test_macro_f1_{k}"] = b.get(f"s1_final_test_macro_f1_{k}", np.nan)
            r[f"control_test_final_macro_f1_{k}"] = ctl[f"s2_final_test_macro_f1_{k}"] if ctl is not None else np.nan
        # the default two-stage run minus its control, paired (pp); not the chosen configuration's
        d = vs_control.loc[(b["model"], b["scenario"])] if (b["model"], b["scenario"]) in vs_control.index else None
        r.update({f"default_minus_control_pp_{k}": d[k] if d is not None else np.nan
                  for k in ("n", "mean", "ci95_lo", "ci95_hi", "wins")})
        best_rows.append(r)
    best_summary = pd.DataFrame(best_rows)
    hp_cols = ["profile", "model", "scenario", "imb_factor", "chosen_variant", "exp_name", "tag", *st.TUNED,
               "ema_alpha", "stage1_epochs", "stage2_epochs", "n_seeds", "val_macro_f1_mean"]
    best_hparams = best.rename(columns={"variant": "chosen_variant", st.SELECT_ON: "val_macro_f1_mean"}) \
        .assign(profile=prof)
    best_hparams = best_hparams[[c for c in hp_cols if c in best_hparams]] if len(best_hparams) else pd.DataFrame(columns=hp_cols)
    for name, df in (("best_summary.csv", best_summary), ("best_hparams.csv", best_hparams)):
        atomic_write_text(out / name, df.to_csv(index=False))
        paths.append(out / name)
    return {"best": best, "best_summary": best_summary, "best_hparams": best_hparams}


def class_counts_table(runs: pd.DataFrame, scenarios, notes: list) -> pd.DataFrame:
    """Per-class training counts at imbalance 0.01, one column per scenario (in the order of
    ``scenarios``), as the ``runs`` (rows of :func:`summary_tuning.load_rows`, finished or not)
    recorded them in their JSONs, at their most common n_max (largest count); empty, with a note,
    when no run at 0.01 recorded its counts."""
    at = runs[runs["imb_factor"] == 0.01]
    recorded = [(g["scenario"].iloc[0], st.class_counts_of(g)) for _, g in at.groupby("source", sort=True)]
    recorded = [(sc, counts) for sc, counts in recorded if counts]
    if not recorded:
        notes.append("class_counts_imb01.csv: no run at imbalance 0.01 recorded its training counts; table left empty")
        return pd.DataFrame(columns=["class", "name", *scenarios, "n_max"])
    n_max = int(pd.Series([max(counts) for _, counts in recorded]).mode().iloc[0])
    of_n_max: dict[str, list[int]] = {}
    for sc, counts in recorded:
        if max(counts) == n_max:
            of_n_max.setdefault(sc, counts)
    C = len(next(iter(of_n_max.values())))
    table = pd.DataFrame({"class": range(C), "name": class_names(C, st.class_names_of(at)),
                          **{sc: of_n_max[sc] for sc in scenarios if len(of_n_max.get(sc, ())) == C}})
    table["n_max"] = n_max
    return table


HELP = """\
Figures and small tables for a report, from the run files under --results (every
results_*.csv, searched in sub-folders too, and the .json beside each). Only finished runs are
drawn; what a figure lacks (a model, scenario, method or seed that other runs have, or a run
still going) is named in a note under it and printed. Error bars are 95% intervals over seeds;
one seed draws none.

Writes into --out:
  forest_paired_macro_f1.png, bar_models_vs_scenario_macro_f1.png, heatmap_macro_f1.png,
  line_depth_trend_macro_f1.png, tuning_sensitivity_macro_f1.png
                    two-stage against its same-budget control, per model and scenario, for
                    one profile (see --profile)
  curves_best/, class_weights/, per_class_f1/, confusion/
                    the best two-stage configuration per model and scenario, chosen on
                    validation macro-F1
  compare/, ablation/
                    the methods side by side, and the ablation variants
  best_summary.csv, best_hparams.csv, class_counts_imb01.csv

example:
  python plots.py --results results --out figures
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument("--results", default="results", help="folder scanned recursively for results_*.csv (default: results)")
    p.add_argument("--out", default="figures", help="folder for the figures and tables (default: figures)")
    p.add_argument("--profile", default=None, help="profile of the grid figures (default: the first of literature, full, reduced, "
                        "quick, smoke that has runs)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    why_not = cli.unwritable_folder(args.out)
    try:
        if why_not:
            raise NotADirectoryError(f"--out {args.out}: {why_not}; give a folder you can write to")
        make_plots(args.results, args.out, args.profile, verbose=not args.quiet)
    except (OSError, ValueError) as e:  # no results, a folder that cannot be written, no such profile
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
