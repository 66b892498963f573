"""Figures and small tables for a report, from the per-run result CSVs alone.

Reads only the ``results_*.csv`` files under ``--results`` (via :mod:`summary_tuning`), so it plots
a grid that is still running: a missing model, scenario or seed, or a run not finished yet, is
left out and named in a note (printed, and written in the figure). Only finished runs are plotted.

The grid figures use one **profile** (``--profile``; default: the first of literature, full,
reduced, quick, smoke that has baseline or tuning runs) and its baseline and tuning suites:

* ``bar_models_vs_scenario_macro_f1.png``: test macro-F1 at stage 2's last epoch, models x
  scenarios, two-stage vs its same-budget control, error bars = std over seeds;
* ``line_depth_trend_macro_f1.png``: macro-F1 and tail macro-F1 against ResNet depth (10, 16, 20
  weighted layers for resnet10/15/20, as model.py counts them);
* ``heatmap_macro_f1.png``: model x scenario, two-stage macro-F1 and its gain over the control;
* per (model, scenario), the best two-stage configuration (baseline + tuning points, chosen on
  **validation** macro-F1 by :func:`summary_tuning.best_configs`), mean over its seeds:
  ``curves_best/<model>_<scenario>_acc_curves_best.png`` (accuracy, macro-F1, tail macro-F1 per
  epoch on val and test, stage boundary marked), ``class_weights/<model>_<scenario>_stage2_weights.png``
  (stage-2 class weights per epoch, one line per class coloured by its training count) and
  ``per_class_f1/<model>_<scenario>_f1_vs_count.png`` (per-class test F1 against training count,
  stage 1 vs stage 2, and the control's stage 2);
* ``best_summary.csv`` (that choice, its test numbers and the control's), ``best_hparams.csv``
  (its settings) and ``class_counts_imb01.csv`` (per-class training counts, both scenarios, 0.01).

For compare-suite results: ``compare/<tag>_<model>_<scenario>_imb<f>.png``, methods x test metrics.

``python plots.py --results results --out figures``; as a library, :func:`make_plots`.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: Agg canvas, no pyplot global state

import summary_tuning as st
from results_logger import atomic_write_text

BASELINE_MODELS = ("simplecnn", "resnet10", "resnet15", "resnet20")  # what run_all_models' grid runs
SCENARIOS = ("long_tail", "head_tail")
DEPTH = {"resnet10": 10, "resnet15": 16, "resnet20": 20, "resnet32": 32}  # weighted layers (model.py)
ROLE_STYLE = {"two_stage": dict(color="tab:blue", label="two-stage (dynamic reweighting)"),
              "control": dict(color="tab:gray", label="same-budget control (stage 2: CE, uniform weights)")}
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13, "savefig.dpi": 130}
MACRO_F1_LABEL = "test macro-F1 (%), stage 2's last epoch"


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


def _order(values, preferred) -> list:
    vals = list(dict.fromkeys(v for v in values if pd.notna(v)))
    return [v for v in preferred if v in vals] + sorted(v for v in vals if v not in preferred)


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
            raise ValueError(f"profile={profile!r} has no baseline/tuning runs; available: "
                             f"{', '.join(repr(p) for p in have) or 'none'}")
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
# Grid figures: two-stage vs control

def plot_bars(cells: pd.DataFrame, models, scenarios, title: str, notes: list, path: Path, paths: list) -> Path:
    fig, body = _new_figure(4.2 + 1.6 * len(models) * len(scenarios) / 2, 5.2)
    axes = body.subplots(1, len(scenarios), sharey=True, squeeze=False)[0]
    width = 0.38
    for ax, sc in zip(axes, scenarios):
        x = np.arange(len(models))
        for j, role in enumerate(("two_stage", "control")):
            d = cells[(cells["scenario"] == sc) & (cells["role"] == role)].set_index("model")
            mean = np.array([_pct(d["s2_final_test_macro_f1_mean"].get(m)) for m in models])
            std = np.array([_pct(d["s2_final_test_macro_f1_std"].get(m)) for m in models])
            pos = x + (j - 0.5) * width
            bars = ax.bar(pos, np.nan_to_num(mean), width, yerr=np.where(np.isfinite(std), std, 0),
                          capsize=3, color=ROLE_STYLE[role]["color"], edgecolor="black", linewidth=0.5,
                          label=ROLE_STYLE[role]["label"] if sc == scenarios[0] else None)
            for b, v in zip(bars, mean):
                ax.text(b.get_x() + b.get_width() / 2, (v if np.isfinite(v) else 0) + 0.6,
                        f"{v:.1f}" if np.isfinite(v) else "missing", ha="center", va="bottom", fontsize=8.5,
                        rotation=90 if not np.isfinite(v) else 0, color="black" if np.isfinite(v) else "dimgray")
        # stage 1 is shared by the two: its end, the starting point of both stage 2s
        d1 = cells[(cells["scenario"] == sc)].groupby("model")["s1_final_test_macro_f1_mean"].mean()
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
    top = np.nanmax([_pct(v) for v in cells["s2_final_test_macro_f1_mean"]] + [_pct(v) for v in cells["s1_final_test_macro_f1_mean"]] + [1])
    axes[0].set_ylim(0, top * 1.25 + 2)
    body.legend(loc="outside upper center", ncol=3, frameon=False)
    _title(fig, title)
    _note(fig, notes)
    return _save(fig, path, paths)


def plot_depth(cells: pd.DataFrame, scenarios, title: str, notes: list, path: Path, paths: list) -> Path:
    # the axis always shows resnet10/15/20 (and resnet32 when it has results), present or not
    resnets = [m for m in DEPTH if m != "resnet32" or m in set(cells["model"])]
    fig, body = _new_figure(11, 5)
    axes = body.subplots(1, len(scenarios), sharey=True, squeeze=False)[0]
    lines = {("macro_f1", "two_stage"): dict(color="tab:blue", ls="-", marker="o"),
             ("tail_macro_f1", "two_stage"): dict(color="tab:orange", ls="-", marker="s"),
             ("macro_f1", "control"): dict(color="tab:blue", ls="--", marker="o", mfc="white"),
             ("tail_macro_f1", "control"): dict(color="tab:orange", ls="--", marker="s", mfc="white")}
    names = {"macro_f1": "macro-F1", "tail_macro_f1": "tail macro-F1"}
    for ax, sc in zip(axes, scenarios):
        for (metric, role), style in lines.items():
            d = cells[(cells["scenario"] == sc) & (cells["role"] == role)].set_index("model")
            pts = [(DEPTH[m], _pct(d[f"s2_final_test_{metric}_mean"].get(m)), _pct(d[f"s2_final_test_{metric}_std"].get(m)))
                   for m in resnets if m in d.index]
            if not pts:
                continue
            xs, ys, es = map(np.array, zip(*pts))
            ax.errorbar(xs, ys, yerr=np.where(np.isfinite(es), es, 0), capsize=3, lw=1.8, ms=7, **style,
                        label=f"{names[metric]}, {'two-stage' if role == 'two_stage' else 'control'}")
        ax.set_xticks([DEPTH[m] for m in resnets], [f"{m}\n({DEPTH[m]} layers)" for m in resnets])
        ax.set_xlim(min(DEPTH[m] for m in resnets) - 2, max(DEPTH[m] for m in resnets) + 2)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no finished ResNet runs", transform=ax.transAxes, ha="center", color="dimgray")
        ax.set_title(sc.replace("_", "-"))
        ax.set_xlabel("depth (weighted layers)")
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
    _note(fig, notes)
    return _save(fig, path, paths)


def plot_heatmap(cells: pd.DataFrame, models, scenarios, title: str, notes: list, path: Path, paths: list) -> Path:
    def grid(role, col):
        d = cells[cells["role"] == role].set_index(["model", "scenario"])
        return np.array([[_pct(d[col].get((m, s))) if col in d else np.nan for s in scenarios] for m in models])

    ours, ours_std = grid("two_stage", "s2_final_test_macro_f1_mean"), grid("two_stage", "s2_final_test_macro_f1_std")
    gain = ours - grid("control", "s2_final_test_macro_f1_mean")
    fig, body = _new_figure(4.0 + 2.2 * len(scenarios), 1.6 + 0.75 * len(models))
    axes = body.subplots(1, 2, squeeze=False)[0]
    lim = max(1.0, np.nanmax(np.abs(gain)) if np.isfinite(gain).any() else 1.0)
    panels = ((axes[0], ours, "viridis", None, None, "two-stage test macro-F1 (%)", "macro-F1 (%)"),
              (axes[1], gain, "RdBu", -lim, lim, "two-stage minus control (pp)", "difference (percentage points)"))
    for ax, data, cmap, vmin, vmax, ttl, cbar in panels:
        cm = matplotlib.colormaps[cmap].with_extremes(bad="lightgray")
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(models)):
            for j in range(len(scenarios)):
                v = data[i, j]
                if not np.isfinite(v):
                    text, color = "missing", "dimgray"
                else:
                    text = f"{v:+.1f}" if data is gain else f"{v:.1f}" + (
                        f"\n± {ours_std[i, j]:.1f}" if np.isfinite(ours_std[i, j]) else "")
                    lo, hi = im.norm.vmin, im.norm.vmax
                    frac = (v - lo) / (hi - lo) if hi > lo else 0.5
                    color = "white" if (data is not gain and frac < 0.6) or (data is gain and abs(v) > 0.6 * lim) else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=10, color=color)
        ax.set_xticks(range(len(scenarios)), [s.replace("_", "-") for s in scenarios])
        ax.set_yticks(range(len(models)), models)
        ax.set_xlabel("scenario")
        ax.set_ylabel("model")
        ax.set_title(ttl)
        body.colorbar(im, ax=ax, label=cbar, shrink=0.9)
    _title(fig, title)
    _note(fig, notes + ["grey cells: no finished run"] if np.isnan(gain).any() else notes)
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
    _note(fig, notes)
    return _save(fig, path, paths)


def _count_colors(counts):
    norm = matplotlib.colors.LogNorm(vmin=max(1, min(counts)), vmax=max(counts) * (1.0001 if min(counts) == max(counts) else 1))
    # viridis without its palest yellow, which is hard to see on white
    return norm, matplotlib.colors.ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0, 0.88, 256)))


def dataset_name(runs: pd.DataFrame) -> str:
    C = set(runs["num_classes"]) if len(runs) else {10}
    return "CIFAR-10" if C == {10} else f"{'/'.join(map(str, sorted(C)))}-class data"


def class_names(C: int) -> list[str]:
    if C == 10:
        import data_loader  # CIFAR-10's class names
        return list(data_loader.CIFAR10_CLASSES)
    return [f"class {c}" for c in range(C)]


def plot_weights(runs: pd.DataFrame, best: pd.Series, counts, title: str, notes: list, path: Path, paths: list) -> Path:
    C = len(counts)
    w_cols = [f"w_{c}" for c in range(C)]
    s2 = runs[(runs["stage"] == 2) & (runs["split"] == "test")]
    w = s2.groupby("epoch")[w_cols].mean()
    norm, cmap = _count_colors(counts)
    names = class_names(C)
    fig, body = _new_figure(10, 5.2)
    ax = body.subplots()
    seen: dict[int, int] = {}  # classes of equal count share a colour: markers tell them apart
    for c in np.argsort(-np.asarray(counts), kind="stable"):
        k = seen[counts[c]] = seen.get(counts[c], -1) + 1
        ax.plot(w.index, w[f"w_{c}"], marker="osD^v<>ph*"[k % 10], ms=5, lw=1.8, color=cmap(norm(counts[c])),
                label=f"{c} {names[c]} (n={counts[c]})")
    for v, lab in ((best.get("min_weight"), "min_weight"), (best.get("max_weight"), "max_weight")):
        if pd.notna(v):
            ax.axhline(float(v), color="black", ls=":", lw=1, label=f"{lab} = {float(v):g}")
    ax.set_xlabel("stage-2 epoch")
    ax.set_ylabel("class weight (multiplies the class's loss; unitless)")
    if len(w.index):
        ax.set_xticks(w.index)
    ax.grid(alpha=0.3)
    body.legend(*ax.get_legend_handles_labels(), loc="outside right upper", title="class (training images)",
               fontsize=8.5)
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    cb = body.colorbar(sm, ax=ax, label="training images per class (log scale)", pad=0.01)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    cb.ax.yaxis.set_major_formatter(plain)
    cb.ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _title(fig, title)
    _note(fig, notes)
    return _save(fig, path, paths)


def plot_per_class_f1(runs: pd.DataFrame, control_runs: pd.DataFrame | None, counts, title: str, notes: list,
                      path: Path, paths: list) -> Path:
    C = len(counts)
    f_cols = [f"f1_{c}" for c in range(C)]

    def final(df, stage):
        d = df[(df["stage"] == stage) & (df["split"] == "test")]
        d = d[d["epoch"] == d["epoch"].max()]
        return 100 * d[f_cols].mean().to_numpy() if len(d) else None

    counts = np.asarray(counts, dtype=float)
    # classes of equal count (head_tail) are spread a little sideways so that none hides another
    jitter = np.ones(C)
    for n in np.unique(counts):
        idx = np.flatnonzero(counts == n)
        if len(idx) > 1:
            jitter[idx] = np.exp(np.linspace(-0.2, 0.2, len(idx)))
    x = counts * jitter
    s1, s2 = final(runs, 1), final(runs, 2)
    ctl = final(control_runs, 2) if control_runs is not None and len(control_runs) else None
    names = class_names(C)
    fig, body = _new_figure(10, 5.6)
    ax = body.subplots()
    for c in range(C):
        if s1 is not None and s2 is not None:
            ax.annotate("", xy=(x[c], s2[c]), xytext=(x[c], s1[c]),
                        arrowprops=dict(arrowstyle="->", color="tab:blue", alpha=0.5, lw=1))
    if s1 is not None:
        ax.scatter(x, s1, s=55, facecolor="white", edgecolor="black", zorder=3, label="end of stage 1 (CE)")
    if s2 is not None:
        ax.scatter(x, s2, s=60, color="tab:blue", zorder=4, label="end of stage 2 (two-stage)")
    if ctl is not None:
        ax.scatter(x * 1.06, ctl, s=60, marker="x", color="tab:red", zorder=4, label="end of stage 2 (same-budget control)")
    for c in range(C):
        y = s2[c] if s2 is not None else s1[c]
        ax.annotate(names[c], (x[c], y), xytext=(-6, 4), textcoords="offset points", ha="right", fontsize=8,
                    color="dimgray")
    ax.set_xscale("log")
    ticks = np.unique(counts)  # tick at each class size, labelled in images
    ax.set_xticks(ticks, [f"{int(v)}" for v in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlim(ticks.min() / 1.5, ticks.max() * 1.5)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test F1 of the class (%)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left")
    _title(fig, title)
    _note(fig, notes if ctl is not None else notes + ["no finished control run for this model and scenario"])
    return _save(fig, path, paths)


# ----------------------------------------------------------------------------------------------
# Compare suite

def _two_lines(s: dict, digits: int = 1) -> str:
    """:func:`summary_tuning.fmt_stat` on two lines: the mean (± std), then the interval or "n=1"."""
    return st.fmt_stat(s, digits).replace(" [", "\n[").replace(" (n=1", "\n(n=1")


def plot_compare(g: pd.DataFrame, title: str, notes: list, path: Path, paths: list) -> Path:
    """Methods x metrics: annotated mean ± std [95% interval]; colour = place in the column's
    range (darkest = highest)."""
    metrics = st.COMPARE_METRICS
    stats = [[{"n": int(r["n_seeds"]), **{k: r[f"test_{m}_pct_{k}"] for k in ("mean", "std", "ci95_lo", "ci95_hi")}}
              for m, _ in metrics] for _, r in g.iterrows()]
    mean = np.array([[s["mean"] for s in row] for row in stats], dtype=float)
    lo, hi = np.nanmin(mean, axis=0), np.nanmax(mean, axis=0)
    rel = (mean - lo) / np.where(hi > lo, hi - lo, 1)
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
    body.colorbar(im, ax=ax, label="place in column\n(0 lowest, 1 highest)", shrink=0.9, pad=0.01)
    _title(fig, title)
    _note(fig, notes)
    return _save(fig, path, paths)


# ----------------------------------------------------------------------------------------------
# Everything

def make_plots(results_dir="results", out_dir="figures", profile: str | None = None, verbose: bool = True) -> dict:
    """Read the CSVs under ``results_dir`` and write every figure and table to ``out_dir``.

    Returns ``paths`` (everything written), ``notes`` (what is missing), and the ``best``,
    ``best_summary``, ``best_hparams`` and ``class_counts`` DataFrames."""
    notes: list[str] = []
    t = st.build_tables(results_dir, notes)
    summary, agg, rows = t["summary"], t["agg"], t["rows"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    result = {"paths": paths, "notes": notes}
    with matplotlib.rc_context(STYLE):
        prof = choose_profile(summary, profile)
        if prof is None:
            notes.append("no baseline or tuning runs: grid figures skipped")
        else:
            result.update(_grid_figures(summary, agg, rows, prof, out, paths, notes))
        compare = t["compare"]
        if len(compare):
            final = compare[compare["selection"] == "final"]
            for key, g in final.groupby(["tag", "model", "scenario", "imb_factor"], sort=False):
                gn = []
                if (g["n_seeds"] < 3).any():
                    gn.append("fewer than 3 seeds: " + ", ".join(f"{m} {n}" for m, n in zip(g["method"], g["n_seeds"]) if n < 3))
                done = set(g["method"])
                absent = [m for m in st.METHOD_ORDER[:-1] if m not in done]
                if absent:
                    gn.append("no finished runs for " + ", ".join(absent))
                notes.extend(f"{key[0]} {key[1]}/{key[2]}: {n}" for n in gn)
                name = f"{key[0] or 'untagged'}_{key[1]}_{key[2]}_imb{key[3]:g}.png"
                data = dataset_name(agg[(agg["tag"] == key[0]) & (agg["model"] == key[1])])
                plot_compare(g, f"Methods on {key[2].replace('_', '-')} {data} (imbalance {key[3]:g}), "
                             f"{key[1]}, {key[0]}", gn, out / "compare" / name, paths)
    if verbose:
        print(f"{len(paths)} file(s) written under {out}")
        for n in notes:
            print(f"note: {n}")
    return result


def _grid_figures(summary, agg, rows, prof: str, out: Path, paths: list, notes: list) -> dict:
    study = agg[agg["suite"].isin(("baseline", "tuning", "")) & (agg["profile"] == prof)] if len(agg) else agg
    all_runs = summary[summary["suite"].isin(("baseline", "tuning", "")) & (summary["profile"] == prof)]
    label = f"profile {prof!r}" if prof else "untagged runs"
    if not len(study):
        notes.append(f"{label}: no finished runs yet ({len(all_runs)} running): grid figures skipped")
        return {}
    gnotes: list[str] = []
    imb = _pick_imb(study, gnotes)
    study = study[study["imb_factor"] == imb]
    inc = all_runs[~all_runs["complete"]]
    if len(inc):
        gnotes.append(f"{len(inc)} run(s) still running, not shown: " + ", ".join(
            f"{r.exp_name}/{r.model}/{r.scenario}/seed{r.seed}" for r in inc.itertuples()))
    cells = _one_per_cell(study[study["role"].isin(("two_stage", "control"))], ["model", "scenario", "role"], gnotes)
    models = _order(list(BASELINE_MODELS) + list(cells["model"]), BASELINE_MODELS)
    scenarios = list(SCENARIOS) + _order([s for s in cells["scenario"] if s not in SCENARIOS], ())
    fig_notes = gnotes + missing_notes(cells, models, scenarios)
    notes.extend(f"{label}: {n}" for n in fig_notes)
    sub = f"{dataset_name(study)}, imbalance {imb:g}, {label}"
    plot_bars(cells, models, scenarios, f"Test macro-F1 per model and scenario: two-stage vs same-budget control\n({sub})",
              fig_notes, out / "bar_models_vs_scenario_macro_f1.png", paths)
    resnets = [m for m in DEPTH if m != "resnet32"]
    depth_notes = gnotes + missing_notes(cells, resnets, scenarios)
    plot_depth(cells, scenarios, f"Macro-F1 and tail macro-F1 against ResNet depth ({sub})", depth_notes,
               out / "line_depth_trend_macro_f1.png", paths)
    plot_heatmap(cells, models, scenarios, f"Test macro-F1, stage 2's last epoch ({sub})", fig_notes,
                 out / "heatmap_macro_f1.png", paths)

    best = st.best_configs(study, by=("model", "scenario", "imb_factor"), notes=notes)
    best_rows, counts_by = [], {}
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
        C = st.num_classes(runs)
        first = summary[summary["config_id"] == b["config_id"]].iloc[0]
        counts = st.train_counts(b["scenario"], imb, first["n_max"], first["val_per_class"], C)
        if counts is None:
            notes.append(f"{stem}: training counts unknown (no n_max and not CIFAR-10): per-class figures skipped")
        else:
            counts_by[(b["scenario"], first["n_max_effective"])] = counts
            plot_weights(runs, b, counts, f"Stage-2 class weights per epoch\n{what}", bn,
                         out / "class_weights" / f"{stem}_stage2_weights.png", paths)
            plot_per_class_f1(runs, ctl_runs, counts, f"Per-class test F1 against training count, stage 1 vs stage 2\n{what}",
                              bn, out / "per_class_f1" / f"{stem}_f1_vs_count.png", paths)
        r = {"profile": prof, "model": b["model"], "scenario": b["scenario"], "imb_factor": imb,
             "chosen_variant": b["variant"], "tag": b["tag"], "exp_name": b["exp_name"],
             "n_candidates": n_cand, "n_seeds": b["n_seeds"], "seeds": b["seeds"],
             "val_macro_f1_mean": b[st.SELECT_ON], "val_macro_f1_std": b[st.SELECT_ON.replace("_mean", "_std")]}
        for m, _ in st.COMPARE_METRICS:
            r[f"test_{m}_mean"], r[f"test_{m}_std"] = b[f"s2_best_test_{m}_mean"], b[f"s2_best_test_{m}_std"]
        r["test_final_macro_f1_mean"] = b["s2_final_test_macro_f1_mean"]
        r["stage1_test_macro_f1_mean"] = b["s1_final_test_macro_f1_mean"]
        r["control_test_final_macro_f1_mean"] = ctl["s2_final_test_macro_f1_mean"] if ctl is not None else np.nan
        r["final_macro_f1_minus_control"] = r["test_final_macro_f1_mean"] - r["control_test_final_macro_f1_mean"]
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
    counts = class_counts_table(study, notes)
    atomic_write_text(out / "class_counts_imb01.csv", counts.to_csv(index=False))
    paths.append(out / "class_counts_imb01.csv")
    return {"best": best, "best_summary": best_summary, "best_hparams": best_hparams, "class_counts": counts}


def class_counts_table(study: pd.DataFrame, notes: list) -> pd.DataFrame:
    """Per-class training counts of both scenarios at imbalance 0.01, for the study's n_max (its
    most common), or CIFAR-10's with 100 validation images per class (4900) when that is unknown
    or too small for 0.01."""
    import data_loader

    default = st.CIFAR10_TRAIN_PER_CLASS - 100
    C = int(study["num_classes"].mode().iloc[0]) if len(study) else 10
    nm = study["n_max_effective"].dropna()
    n_max = int(nm.mode().iloc[0]) if len(nm) else default
    try:
        counts = {sc: data_loader.class_counts(sc, 0.01, n_max, C) for sc in SCENARIOS}
    except ValueError:  # e.g. the smoke profile's n_max=40 leaves empty classes at 0.01
        notes.append(f"class_counts_imb01.csv: n_max={n_max} leaves a class empty at 0.01; "
                     f"counts given for n_max={default}")
        n_max = default
        counts = {sc: data_loader.class_counts(sc, 0.01, n_max, C) for sc in SCENARIOS}
    table = pd.DataFrame({"class": range(C), "name": class_names(C), **counts})
    table["n_max"] = n_max
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--results", default="results", help="folder scanned recursively for results_*.csv")
    p.add_argument("--out", default="figures", help="folder for the figures and tables")
    p.add_argument("--profile", default=None, help="profile of the grid figures (default: the first of literature, full, reduced, "
                        "quick, smoke that has runs)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        make_plots(args.results, args.out, args.profile, verbose=not args.quiet)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
