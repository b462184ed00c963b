"""The report's charts, drawn with matplotlib into SVG files beside the page (no script, no network).

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), and saved without a date and with a fixed
hash salt, so the same numbers give the same file.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from maskrcnn_tfx.pipelines import metrics as metrics_lib

# A colour-blind-safe palette (Okabe-Ito), cycled for classes and series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
KIND_COLORS = {metrics_lib.MASK_AP: "#0072B2", metrics_lib.BOX_AP: "#E69F00"}
KIND_LABELS = {metrics_lib.MASK_AP: "mask AP", metrics_lib.BOX_AP: "box AP"}
# Above this many classes the instance counts are drawn one row per class (names on the side, not squeezed).
MAX_COLUMN_CLASSES = 12
# Per-class precision-recall curves drawn at most (the best ones): more would be an unreadable tangle.
MAX_CLASS_CURVES = 8
BLESSED_COLOR, NOT_BLESSED_COLOR, NEUTRAL_COLOR = "#009E73", "#D55E00", "#888888"


def _figure(width: float, height: float):
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.rcParams["svg.hashsalt"] = "maskrcnn-tfx-report"
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure


def _save(figure, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, format="svg", metadata={"Date": None})
    return path


def _style(ax) -> None:
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _finite(value: Optional[float]) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def per_class_ap(class_names: Sequence[str], values: Dict[str, Dict[str, Optional[float]]],
                 baseline: Dict[str, Dict[str, Optional[float]]], path: str) -> str:
    """Horizontal bars of AP per class, mask and box side by side; the baseline's AP as black ticks.

    ``values[kind][class name]`` (kind "mask_ap" / "box_ap"); a missing or NaN value (no ground truth) is left
    blank and labelled "n/a".
    """
    kinds = [k for k in (metrics_lib.MASK_AP, metrics_lib.BOX_AP)
             if any(_finite(v) for v in values.get(k, {}).values())]
    kinds = kinds or [metrics_lib.MASK_AP]
    count = max(len(class_names), 1)
    # Bars get thinner with many classes (COCO's 80), so the chart stays a readable height.
    row_height = 0.42 if count * len(kinds) <= 24 else 0.24
    figure = _figure(7.5, 1.2 + row_height * count * len(kinds))
    ax = figure.subplots()
    height = 0.8 / len(kinds)
    positions = np.arange(count)[::-1]
    for i, kind in enumerate(kinds):
        offset = (i - (len(kinds) - 1) / 2) * height
        numbers = [values.get(kind, {}).get(name) for name in class_names]
        shown = [v if _finite(v) else 0.0 for v in numbers]
        bars = ax.barh(positions - offset, shown, height=height * 0.92, color=KIND_COLORS[kind],
                       label=KIND_LABELS[kind])
        for bar, value in zip(bars, numbers):
            text = f"{value:.3f}" if _finite(value) else "n/a"
            ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
        base = [baseline.get(kind, {}).get(name) for name in class_names]
        points = [(v, p - offset) for v, p in zip(base, positions) if _finite(v)]
        if points:
            ax.scatter([v for v, _ in points], [p for _, p in points], marker="|", s=220, color="black",
                       linewidths=2, zorder=3, label="baseline" if i == 0 else None)
    ax.set_yticks(positions, list(class_names) or ["(no classes)"])
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("AP at IoU .50:.95")
    figure.legend(loc="outside upper center", ncol=3, fontsize=8, frameon=False)
    _style(ax)
    return _save(figure, path)


def pr_curves(curves: Dict[str, np.ndarray], class_names: Sequence[str], path: str) -> str:
    """Precision-recall curves: per kind (mask, box), the mean over classes at each IoU row, and each class at
    IoU .50. ``curves[kind]`` is the ``[3, 1 + C, 101]`` array of ``maskrcnn_tfx.pipelines.metrics.pr_curves_name``."""
    kinds = [k for k in (metrics_lib.MASK_AP, metrics_lib.BOX_AP) if k in curves]
    figure = _figure(4.2 * len(kinds), 7.4)
    axes = figure.subplots(2, len(kinds), squeeze=False)
    recall = metrics_lib.PR_CURVE_RECALLS
    for column, kind in enumerate(kinds):
        array = curves[kind]
        top, bottom = axes[0][column], axes[1][column]
        for row, (iou, style) in enumerate(zip(metrics_lib.PR_CURVE_IOUS, ("-", "--", ":"))):
            if not np.all(np.isnan(array[row, 0])):
                ap = float(np.nanmean(array[row, 0]))
                top.plot(recall, array[row, 0], style, color=KIND_COLORS[kind], label=f"IoU {iou} (AP {ap:.3f})")
        top.set_title(f"{KIND_LABELS[kind]}: mean over classes", fontsize=10)
        # Classes with ground truth (a curve), best AP50 first; with many classes only the best few are drawn.
        drawn = [(float(np.nanmean(array[1, 1 + k])), name, k)
                 for k, name in enumerate(class_names[:array.shape[1] - 1]) if not np.all(np.isnan(array[1, 1 + k]))]
        drawn.sort(key=lambda item: (-item[0], item[1]))
        for n, (ap50, name, k) in enumerate(drawn[:MAX_CLASS_CURVES]):
            bottom.plot(recall, array[1, 1 + k], color=PALETTE[n % len(PALETTE)], label=f"{name} (AP50 {ap50:.3f})")
        more = f" (the best {MAX_CLASS_CURVES} of {len(drawn)})" if len(drawn) > MAX_CLASS_CURVES else ""
        bottom.set_title(f"{KIND_LABELS[kind]}: per class at IoU .50{more}", fontsize=10)
        for ax in (top, bottom):
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            if ax.lines:
                ax.legend(fontsize=7, loc="upper right", frameon=False)
            _style(ax)
    return _save(figure, path)


def training_curves(panels: List[Tuple[str, Dict[str, List[Tuple[int, float]]]]], path: str) -> str:
    """Small multiples of TensorBoard scalars: ``panels`` of (title, {tag: [(step, value)]})."""
    columns = min(2, max(len(panels), 1))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = _figure(5.0 * columns, 3.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, (title, series) in enumerate(panels):
        ax = axes[index // columns][index % columns]
        for k, (tag, points) in enumerate(sorted(series.items())):
            steps = [s for s, _ in points]
            values = [v for _, v in points]
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3,
                    color=PALETTE[k % len(PALETTE)], label=tag)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7, frameon=False)
        _style(ax)
    for index in range(len(panels), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    return _save(figure, path)


def runs_history(runs: List[Dict[str, object]], path: str) -> str:
    """Mask and box AP across runs: ``runs`` of {"label", "mask_ap", "box_ap", "blessed" (True/False/None)}.

    Blessed runs are filled green circles, not-blessed red crosses, unevaluated runs leave a gap.
    """
    figure = _figure(max(6.0, 0.5 * len(runs) + 3.0), 3.6)
    ax = figure.subplots()
    x = np.arange(len(runs))
    for kind, style in ((metrics_lib.MASK_AP, "-"), (metrics_lib.BOX_AP, "--")):
        values = np.array([float(r[kind]) if _finite(r.get(kind)) else np.nan for r in runs])  # type: ignore[arg-type]
        if np.all(np.isnan(values)):
            continue
        ax.plot(x, values, style, color=KIND_COLORS[kind], label=KIND_LABELS[kind], zorder=2)
        for xi, value, run in zip(x, values, runs):
            if np.isnan(value):
                continue
            if run.get("blessed") is True:
                ax.scatter([xi], [value], color=BLESSED_COLOR, s=36, zorder=3, edgecolors=KIND_COLORS[kind])
            elif run.get("blessed") is False:
                ax.scatter([xi], [value], color=NOT_BLESSED_COLOR, marker="x", s=44, zorder=3)
            else:
                ax.scatter([xi], [value], facecolors="white", edgecolors=NEUTRAL_COLOR, s=30, zorder=3)
    ax.scatter([], [], color=BLESSED_COLOR, s=36, label="blessed")
    ax.scatter([], [], color=NOT_BLESSED_COLOR, marker="x", s=44, label="not blessed")
    ax.set_xticks(x, [str(r["label"]) for r in runs], rotation=30 if len(runs) > 8 else 0, fontsize=8)
    ax.set_xlabel("run")
    ax.set_ylabel("AP at IoU .50:.95")
    # AP is in [0, 1]; a low-scoring history gets a closer axis so that its changes show.
    shown = [float(r[k]) for r in runs for k in (metrics_lib.MASK_AP, metrics_lib.BOX_AP)  # type: ignore[arg-type]
             if _finite(r.get(k))]
    ax.set_ylim(0, min(1.0, max(0.05, 1.15 * max(shown, default=1.0))))
    figure.legend(loc="outside upper center", fontsize=8, frameon=False, ncol=4)
    _style(ax)
    return _save(figure, path)


def class_counts(counts_by_split: Dict[str, Dict[str, int]], path: str) -> str:
    """Instances per class in each split (grouped bars)."""
    names = sorted({n for counts in counts_by_split.values() for n in counts})
    splits = list(counts_by_split)
    if len(names) > MAX_COLUMN_CLASSES:
        return _class_counts_by_row(counts_by_split, names, splits, path)
    figure = _figure(max(5.0, 0.8 * len(names) + 2.0), 3.2)
    ax = figure.subplots()
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(names))
    for i, split in enumerate(splits):
        values = [counts_by_split[split].get(n, 0) for n in names]
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width * 0.92,
                      color=PALETTE[i % len(PALETTE)], label=split)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel("instances")
    ax.legend(fontsize=8, frameon=False)
    _style(ax)
    return _save(figure, path)


def _class_counts_by_row(counts_by_split: Dict[str, Dict[str, int]], names: List[str], splits: List[str],
                         path: str) -> str:
    """Many classes (COCO's 80): one row per class, the most frequent first, so every name stays readable."""
    names = sorted(names, key=lambda n: (-sum(c.get(n, 0) for c in counts_by_split.values()), n))
    figure = _figure(7.5, 1.2 + 0.14 * len(names) * max(len(splits), 1))
    ax = figure.subplots()
    height = 0.8 / max(len(splits), 1)
    y = np.arange(len(names))[::-1]
    for i, split in enumerate(splits):
        values = [counts_by_split[split].get(n, 0) for n in names]
        bars = ax.barh(y - (i - (len(splits) - 1) / 2) * height, values, height * 0.92,
                       color=PALETTE[i % len(PALETTE)], label=split)
        ax.bar_label(bars, fontsize=6, padding=2)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel("instances")
    figure.legend(loc="outside upper center", ncol=len(splits), fontsize=8, frameon=False)
    _style(ax)
    return _save(figure, path)
