"""Figures for reports: per-class IoU, confusion matrices, curves, class-weight traces, image grids.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot
state, no GUI, safe in worker threads), writes a PNG to ``path`` (parent folders are created) and
returns the path. Class colours come from the Cityscapes ``PALETTE`` where a class name is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from balda.data.labels import CLASS_NAMES, PALETTE

__all__ = [
    "plot_class_iou",
    "plot_confusion",
    "plot_curves",
    "plot_class_weights",
    "plot_bars",
    "image_grid",
    "class_color",
]

_DPI = 120
_LINESTYLES = ("-", "--", "-.", ":")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight", facecolor="white")
    return path


def class_color(name: str, index: int = 0) -> tuple[float, float, float]:
    """RGB colour in [0, 1] of a class: its Cityscapes palette colour, else a tab20 colour."""
    if name in CLASS_NAMES:
        r, g, b = PALETTE[CLASS_NAMES.index(name)]
        return (r / 255.0, g / 255.0, b / 255.0)
    from matplotlib import colormaps

    return tuple(colormaps["tab20"](index % 20)[:3])


def _method_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _as_percent(values: Sequence[np.ndarray]) -> float:
    """Scale factor: 100 when every finite value lies in [0, 1] (fractions), else 1."""
    finite = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values]) if values else np.zeros(0)
    finite = finite[np.isfinite(finite)]
    return 100.0 if finite.size == 0 or finite.max() <= 1.0 else 1.0


def plot_class_iou(
    results: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    path: str | Path,
    title: str = "",
    metric: str = "IoU",
) -> Path:
    """Grouped bars of a per-class score (IoU by default; ``metric="accuracy"`` for classification),
    one colour per method, its nanmean in the legend (mIoU, or "mean accuracy").

    ``results`` maps a method name to its (K,) array (fractions or percent; NaN bars are left
    empty). A strip in each class's palette colour marks the class under the axis.
    """
    names = list(class_names)
    k = len(names)
    methods = list(results)
    arrays = [np.asarray(results[m], dtype=np.float64).reshape(-1) for m in methods]
    for m, a in zip(methods, arrays):
        if a.shape != (k,):
            raise ValueError(f"{metric} of {m!r} has shape {a.shape}, expected ({k},)")
    scale = _as_percent(arrays)
    n = max(len(methods), 1)
    width = 0.8 / n
    fig = _new_figure(max(8.0, 0.42 * k * max(1.0, n / 2.0) + 1.5), 4.8)
    ax = fig.add_subplot()
    x = np.arange(k)
    for i, (m, a, col) in enumerate(zip(methods, arrays, _method_colors(n))):
        vals = a * scale
        miou = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
        ax.bar(
            x - 0.4 + width * (i + 0.5),
            vals,
            width=width,
            color=col,
            edgecolor="white",
            linewidth=0.4,
            label=f"{m} ({ {'IoU': 'mIoU', 'PQ': 'mPQ'}.get(metric, 'mean ' + metric) } {miou:.1f})",
        )
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=9)
    ax.tick_params(axis="x", pad=9, length=0)
    trans = ax.get_xaxis_transform()
    for i, name in enumerate(names):
        ax.add_patch(
            Rectangle(
                (i - 0.4, -0.035),
                0.8,
                0.025,
                transform=trans,
                clip_on=False,
                facecolor=class_color(name, i),
                edgecolor="none",
            )
        )
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0, 100 if scale == 100.0 else None)
    ax.set_ylabel(f"{metric} (%)")
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if methods:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=9)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def confusion_values(
    conf: np.ndarray, normalize: Optional[str] = "true", unit: str = "pixels"
) -> tuple[np.ndarray, float, str]:
    """What :func:`plot_confusion` draws: the (K, K) values (normalised shares in **percent**, as the
    cells are printed, or raw counts), the colour-bar maximum and its label (counts of ``unit``)."""
    c = np.asarray(conf, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if normalize == "true":
            m = c / c.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            m = c / c.sum(axis=0, keepdims=True)
        elif normalize == "all":
            m = c / c.sum()
        elif normalize in (None, "none"):
            return c, float(np.nanmax(c)) if np.isfinite(c).any() else 1.0, unit
        else:
            raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}")
    label = {"true": f"% of GT {unit}", "pred": f"% of predicted {unit}", "all": f"% of all {unit}"}[normalize]
    return 100.0 * m, 100.0, label


def plot_confusion(
    conf: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    normalize: Optional[str] = "true",
    title: str = "",
    unit: str = "pixels",
) -> Path:
    """Heat map of a (K, K) confusion matrix (rows = ground truth, columns = prediction).

    ``normalize``: ``'true'`` divides each row by its GT total (cells are recall shares), ``'pred'``
    each column by its prediction total, ``'all'`` by the grand total, ``None``/``'none'`` keeps counts.
    Empty rows/columns are left blank. Cell values are printed (in %) for up to 25 classes.
    """
    c = np.asarray(conf, dtype=np.float64)
    k = len(class_names)
    if c.shape != (k, k):
        raise ValueError(f"confusion has shape {c.shape}, expected ({k}, {k})")
    m, vmax, label = confusion_values(c, normalize, unit)
    normed = normalize not in (None, "none")
    side = max(5.0, 0.42 * k + 2.0)
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(m), cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label(label)
    ax.set_xticks(np.arange(k))
    ax.set_yticks(np.arange(k))
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("Prediction")
    ax.set_ylabel("Ground truth")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                v = m[i, j]
                if not np.isfinite(v) or v == 0 or (normed and v < 0.5):
                    continue  # blank rather than a wall of "0"
                txt = f"{v:.0f}"
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=6 if k > 12 else 8,
                    color="white" if v > 0.55 * vmax else "black",
                )
    ax.set_title(title or ("Confusion matrix" + (" (row-normalised, %)" if normalize == "true" else "")))
    return _save(fig, path)


def plot_curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Line plot of named ``(x, y)`` series (markers when a series has at most 30 points)."""
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot()
    for (name, (xs, ys)), col in zip(series.items(), _method_colors(max(len(series), 1))):
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        if xs.shape != ys.shape:
            raise ValueError(f"series {name!r}: x has shape {xs.shape}, y has {ys.shape}")
        ax.plot(xs, ys, label=name, color=col, linewidth=1.6, marker="o" if len(xs) <= 30 else None, markersize=3.5)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if series:
        ax.legend(frameon=False, fontsize=9)
    return _save(fig, path)


def plot_class_weights(
    steps: Sequence[float],
    weights: np.ndarray,
    class_names: Sequence[str],
    path: str | Path,
    title: str = "Class weights",
    ylabel: str = "weight",
) -> Path:
    """One line per class (its palette colour) of class weights ``weights`` (T, K) over ``steps`` (T,).

    Line styles cycle every few classes so that classes with similar palette colours stay apart.
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(steps, dtype=np.float64)
    k = len(class_names)
    if w.ndim != 2 or w.shape != (len(s), k):
        raise ValueError(f"weights has shape {w.shape}, expected ({len(s)}, {k})")
    fig = _new_figure(8.5, 4.6)
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        ax.plot(
            s,
            w[:, c],
            color=class_color(name, c),
            linestyle=_LINESTYLES[(c // 5) % len(_LINESTYLES)],
            linewidth=1.5,
            label=name,
        )
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8, ncol=1 if k <= 20 else 2)
    return _save(fig, path)


def plot_bars(
    values: Mapping[str, float],
    path: str | Path,
    title: str = "",
    ylabel: str = "",
    errors: Optional[Mapping[str, float] | Sequence[float]] = None,
) -> Path:
    """Bar chart of named values, with optional error bars (e.g. std over seeds), values annotated."""
    names = list(values)
    vals = np.asarray([values[n] for n in names], dtype=np.float64)
    if errors is None:
        err = None
    elif isinstance(errors, Mapping):
        err = np.asarray([errors.get(n, np.nan) for n in names], dtype=np.float64)
    else:
        err = np.asarray(list(errors), dtype=np.float64)
        if err.shape != vals.shape:
            raise ValueError(f"errors has {err.size} entries, expected {vals.size}")
    fig = _new_figure(max(5.0, 0.8 * len(names) + 2.0), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, vals, color=_method_colors(max(len(names), 1))[: len(names)], edgecolor="white")
    if err is not None:
        has = np.isfinite(err) & np.isfinite(vals)  # no error bar where the error is unknown
        if has.any():
            ax.errorbar(x[has], vals[has], yerr=err[has], fmt="none", ecolor="black", capsize=4, linewidth=1.2)
    top = np.nanmax(np.abs(vals + (np.nan_to_num(err) if err is not None else 0))) if len(vals) else 1.0
    top = top if np.isfinite(top) and top > 0 else 1.0
    for xi, v, e in zip(x, vals, err if err is not None else np.zeros_like(vals)):
        if np.isfinite(v):
            ax.text(xi, v + (e if np.isfinite(e) else 0) + 0.01 * top, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    long = any(len(n) > 8 for n in names)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if long else 0, ha="right" if long else "center", fontsize=9)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.yaxis.grid(True, alpha=0.3)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _save(fig, path)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | Path,
    titles: Optional[Sequence[str] | Sequence[Sequence[str]]] = None,
    cell_width: float = 3.2,
) -> Path:
    """Tile images (uint8 HxWx3 RGB or HxW grey) into a grid, one list per row.

    ``titles``: per-cell (a list of lists shaped like ``rows``) or per-column (a flat list, shown
    above the first row). Rows may have different lengths; missing cells stay blank.
    """
    if not rows or not any(len(r) for r in rows):
        raise ValueError("image_grid needs at least one image")
    nrows = len(rows)
    ncols = max(len(r) for r in rows)
    first = np.asarray(next(img for r in rows for img in r))
    aspect = first.shape[0] / max(first.shape[1], 1)
    per_cell = titles is not None and len(titles) > 0 and not isinstance(titles[0], str)
    title_h = 0.3 if titles else 0.0
    fig = _new_figure(cell_width * ncols, (cell_width * aspect + title_h) * nrows)
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = fig.add_subplot(nrows, ncols, i * ncols + j + 1)
            ax.set_axis_off()
            if j >= len(row):
                continue
            img = np.asarray(row[j])
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[..., 0]
            if img.ndim == 2:
                ax.imshow(
                    img, cmap="gray", interpolation="nearest", vmin=0, vmax=255 if img.dtype == np.uint8 else None
                )
            else:
                ax.imshow(img, interpolation="nearest")
            label = None
            if per_cell:
                if i < len(titles) and j < len(titles[i]):
                    label = titles[i][j]
            elif titles is not None and i == 0 and j < len(titles):
                label = titles[j]
            if label:
                ax.set_title(str(label), fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99, wspace=0.03, hspace=0.12 if titles else 0.03)
    return _save(fig, path)
