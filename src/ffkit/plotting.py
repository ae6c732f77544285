"""Plots of a training run: per-layer accuracy, goodness, deactivated neurons and SIP's accuracy grid.

Needs matplotlib, an optional extra: ``pip install -e ".[plot]"`` in an ffkit checkout (``pip install matplotlib``
does the same). It is imported only when a plot is drawn, so
``import ffkit`` and ``import ffkit.plotting`` work without it.

Every function reads a run's *history*: the list of epoch records that :meth:`ffkit.train.Trainer.fit` returns and
``ffkit train`` writes to ``RUN_DIR/metrics.json`` (there with numbers rounded to 7 significant digits and 1-based
layer ranges such as ``sip_layers`` beside the 0-based ``sip_range``; either form plots alike). Each record's
``"test"`` entry is an :class:`~ffkit.evaluation.EvalReport` as a dict; the plots use its ``per_layer``,
``all_layers`` and ``sip`` accuracies, ``sip_range``, ``goodness_pos`` / ``goodness_neg``, ``dead_ratio`` and
``sip_grid``, and name layers 1-based, as the console does.

* :func:`plot_layer_accuracy` -- each layer's test accuracy over the epochs (DeeperForward Fig. 5d, The Trifecta
  Fig. 1), with the one-pass accuracy of all layers and of the SIP range.
* :func:`plot_goodness` -- each layer's mean goodness of positive data (the true label's score) and of negative
  data (the mean score of the wrong labels).
* :func:`plot_dead_neurons` -- each layer's share of deactivated units (DeeperForward, Appendix I).
* :func:`plot_sip_grid` -- the test accuracy of every layer range ``start..end`` (SIP's grid, DeeperForward Eq. 12).

The training curves read the *records* of ``RUN_DIR/metrics.jsonl`` (:mod:`ffkit.train.runlog`): step records every
``log_every`` batches (``ffkit train --log-interval N``) and epoch records, drawn against the epoch (fractional,
integer ticks), so that a one-epoch run shows how each layer learned:

* :func:`plot_train_curves` -- each layer's train loss or train accuracy (with its test accuracy at each epoch's end
  as markers).
* :func:`plot_goodness_curves` -- each layer's mean goodness of positive and of negative training data.
* :func:`plot_lr_throughput` -- the learning rate and the training images/s.

:func:`plot_run` draws all of them from a run directory, one file each (what ``ffkit plot RUN_DIR`` runs).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "plot_layer_accuracy",
    "plot_goodness",
    "plot_dead_neurons",
    "plot_sip_grid",
    "plot_train_curves",
    "plot_goodness_curves",
    "plot_lr_throughput",
    "plot_run",
    "PLOT_FILES",
    "CURVE_FILES",
    "FORMATS",
]

#: The files :func:`plot_run` writes (without their extension) from the epoch records of ``metrics.json``, in order.
PLOT_FILES: tuple[str, ...] = ("layer_accuracy", "goodness", "dead_neurons", "sip_grid")
#: The files :func:`plot_run` also writes when ``metrics.jsonl`` holds step records, in order.
CURVE_FILES: tuple[str, ...] = ("train_loss", "train_accuracy", "train_goodness", "lr_throughput")
#: The file formats :func:`plot_run` can write.
FORMATS: tuple[str, ...] = ("png", "pdf", "svg")

_INSTALL = 'pip install matplotlib (in an ffkit checkout: pip install -e ".[plot]")'
#: test-record fields each plot needs (``None`` is accepted for ``dead_ratio``: "not measured")
_NEEDS: dict[str, tuple[str, ...]] = {
    "layer_accuracy": ("per_layer", "all_layers"),
    "goodness": ("goodness_pos", "goodness_neg"),
    "dead_neurons": ("dead_ratio",),
    "sip_grid": ("sip_grid",),
}
_MAY_BE_NONE = {"dead_ratio"}
_LEGEND_MAX_LAYERS = 12  # more layers: a colour bar instead of one legend entry per layer
_ANNOTATE_MAX_LAYERS = 12  # more layers: no numbers written in the bars / grid cells


# -- matplotlib -------------------------------------------------------------------------------------------------------
def _matplotlib() -> Any:
    """Import matplotlib, or raise an ImportError that says how to install it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f"ffkit's plots need matplotlib, which is not installed: {_INSTALL}") from err
    return matplotlib


def _headless() -> bool:
    """Linux/BSD without an X or Wayland display (macOS and Windows always have one)."""
    if sys.platform.startswith(("darwin", "win", "cygwin")):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _pyplot() -> Any:
    """``matplotlib.pyplot``, on the Agg backend when there is no display and no backend was chosen."""
    mpl = _matplotlib()
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and _headless():
        mpl.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    _, new = _pyplot().subplots(figsize=figsize, layout="constrained")
    return new


# -- reading the history ----------------------------------------------------------------------------------------------
def _check_history(history: Any, plots: Sequence[str], source: str) -> list[Mapping[str, Any]]:
    """The epoch records, after checking that each has a test record with the fields ``plots`` need."""
    rerun = f"re-run `ffkit train` with this ffkit version ({__version__}) to record them"
    if not isinstance(history, Sequence) or isinstance(history, (str, bytes)):
        raise ValueError(f"{source} must hold a list of epoch records, got {type(history).__name__}")
    if not history:
        raise ValueError(f"{source} holds no epochs: train at least one epoch with a test set")
    for i, rec in enumerate(history):
        if not isinstance(rec, Mapping):
            raise ValueError(f"{source}: epoch record {i} is a {type(rec).__name__}, not a dict")
        epoch = rec.get("epoch", i + 1)
        test = rec.get("test")
        if not isinstance(test, Mapping):
            raise ValueError(
                f"{source}: epoch {epoch} has no test evaluation ('test' record); the plots need a run evaluated on "
                "a test set each epoch (`ffkit train` does so; with Trainer.fit pass test=...)"
            )
        missing = [
            field for plot in plots for field in _NEEDS[plot]
            if field not in test or (test[field] is None and field not in _MAY_BE_NONE)
        ]
        if missing:
            missing = list(dict.fromkeys(missing))
            raise ValueError(
                f"{source}: the test record of epoch {epoch} lacks {', '.join(missing)} (written by an older ffkit); "
                + rerun
            )
    return list(history)


def _record(history: Sequence[Mapping[str, Any]], epoch: int) -> tuple[int, Mapping[str, Any]]:
    """``(epoch number, test record)`` of ``history[epoch]`` (an index: -1 is the last epoch)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise TypeError(f"epoch must be an int index into the history, got {type(epoch).__name__}")
    if not -len(history) <= epoch < len(history):
        raise ValueError(f"epoch index {epoch} is out of range for a history of {len(history)} epochs")
    rec = history[epoch]
    return int(rec.get("epoch", epoch % len(history) + 1)), rec["test"]


def _layer_ticks(ax: Axes, n_layers: int, axis: str = "x") -> None:
    """Ticks at layers 1..L (every k-th when there are many)."""
    step = max(1, math.ceil(n_layers / 20))
    ticks = list(range(0, n_layers, step))
    labels = [str(i + 1) for i in ticks]
    if axis == "x":
        ax.set_xticks(ticks, labels)
    else:
        ax.set_yticks(ticks, labels)


def _layer_colors(n_layers: int) -> list[Any]:
    """One colour per layer, shallow (dark) to deep (light), from viridis without its pale yellow end."""
    cmap = _matplotlib().colormaps["viridis"]
    return [cmap(0.9 * i / max(1, n_layers - 1)) for i in range(n_layers)]


# -- the plots --------------------------------------------------------------------------------------------------------
def plot_layer_accuracy(history: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Axes:
    """Each layer's test accuracy over the epochs, with the one-pass accuracy of all layers and of the SIP range.

    DeeperForward Fig. 5d and The Trifecta Fig. 1 show the same curves: deeper layers of a well-trained local network
    should end up at least as accurate as shallow ones. A history of one epoch has no curve to draw: its layers' test
    accuracies are bars by layer instead, with the read-outs as horizontal lines (:func:`plot_train_curves` shows how
    the layers learned within the epoch).

    Args:
        history: the run's epoch records (``Trainer.fit``'s return value, or ``metrics.json`` loaded).
        ax: the axes to draw on; a new figure when ``None``.

    Returns:
        The axes drawn on.
    """
    records = _check_history(history, ["layer_accuracy"], "history")
    ax = _axes(ax, (7.0, 4.5))
    if len(records) == 1:
        return _layer_accuracy_bars(records[0], int(records[0].get("epoch", 1)), ax)
    epochs = [int(r.get("epoch", i + 1)) for i, r in enumerate(records)]
    per_layer = [[100 * v for v in r["test"]["per_layer"]] for r in records]
    n_layers = len(per_layer[-1])
    colors = _layer_colors(n_layers)
    marker = "o" if len(epochs) <= 30 else None
    for layer in range(n_layers):
        ys = [row[layer] if layer < len(row) else math.nan for row in per_layer]
        ax.plot(epochs, ys, color=colors[layer], marker=marker, markersize=3, linewidth=1.4, label=f"layer {layer + 1}")
    ax.plot(epochs, [100 * r["test"]["all_layers"] for r in records], color="black", linestyle="--", linewidth=1.6,
            marker=marker, markersize=3, label="all layers (one pass)")
    sip = [r["test"].get("sip") for r in records]
    if any(v is not None for v in sip):
        last = records[-1]["test"].get("sip_range")
        label = f"SIP range (last: layers {last[0] + 1}..{last[1] + 1})" if last else "SIP range"
        ax.plot(epochs, [100 * v if v is not None else math.nan for v in sip], color="tab:red", linestyle=":",
                linewidth=2.0, marker=marker, markersize=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Per-layer test accuracy")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if n_layers > _LEGEND_MAX_LAYERS:  # one colour bar for the layers, a legend for the read-outs only
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import ListedColormap, Normalize

        mappable = ScalarMappable(norm=Normalize(1, n_layers), cmap=ListedColormap(colors))
        ax.figure.colorbar(mappable, ax=ax, label="layer")
        handles, labels = handles[n_layers:], labels[n_layers:]
    ax.legend(handles, labels, fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return ax


def _layer_accuracy_bars(record: Mapping[str, Any], epoch: int, ax: Axes) -> Axes:
    """One epoch's per-layer test accuracy as bars, the all-layer and SIP accuracies as horizontal lines."""
    test = record["test"]
    values = [100 * v for v in test["per_layer"]]
    xs = list(range(len(values)))
    bars = ax.bar(xs, values, 0.6, color=_layer_colors(len(values)))
    if len(values) <= _ANNOTATE_MAX_LAYERS:
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize="small")
    ax.axhline(100 * test["all_layers"], color="black", linestyle="--", linewidth=1.6, label="all layers (one pass)")
    if test.get("sip") is not None:
        rng = test.get("sip_range")
        label = f"SIP range (layers {rng[0] + 1}..{rng[1] + 1})" if rng else "SIP range"
        ax.axhline(100 * test["sip"], color="tab:red", linestyle=":", linewidth=2.0, label=label)
    top = max([*values, 100 * test["all_layers"], 100 * (test.get("sip") or 0.0)])
    ax.set_ylim(0, min(100.0, top) * 1.15 or 1.0)
    _layer_ticks(ax, len(values))
    ax.set_xlabel("layer")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Per-layer test accuracy, epoch {epoch}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right", framealpha=0.9)
    return ax


def plot_goodness(history: Sequence[Mapping[str, Any]], ax: Axes | None = None, epoch: int = -1) -> Axes:
    """Each layer's mean goodness of positive and of negative test data at one epoch (bars side by side).

    Positive: the layer's score of the true label; negative: its mean score of the wrong labels
    (:func:`ffkit.evaluation.mean_goodness`). For label-input networks (Hinton's FF, The Trifecta) these are the
    goodness of label-overlaid positive and negative data; for channel-wise networks (DeeperForward) the goodness of
    the true class's channel group against the other classes' groups. Training pushes them apart.

    Args:
        history: the run's epoch records (``Trainer.fit``'s return value, or ``metrics.json`` loaded).
        ax: the axes to draw on; a new figure when ``None``.
        epoch: index into ``history`` (``-1``: the last epoch).

    Returns:
        The axes drawn on.
    """
    records = _check_history(history, ["goodness"], "history")
    number, test = _record(records, epoch)
    ax = _axes(ax, (7.0, 4.5))
    pos, neg = list(test["goodness_pos"]), list(test["goodness_neg"])
    xs = list(range(len(pos)))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], pos, width, color="tab:blue", label="positive data (true label)")
    ax.bar([x + width / 2 for x in xs], neg, width, color="tab:orange", label="negative data (wrong labels, mean)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    _layer_ticks(ax, len(pos))
    ax.set_xlabel("layer")
    ax.set_ylabel("mean goodness (class score)")
    ax.set_title(f"Goodness of positive and negative test data, epoch {number}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_dead_neurons(history: Sequence[Mapping[str, Any]], ax: Axes | None = None, epoch: int = -1) -> Axes:
    """Each layer's share of deactivated units at one epoch: units that are 0 for every test input.

    A unit is one ReLU output: a channel at one position for conv layers, one unit of a linear layer
    (DeeperForward, Appendix I; :class:`ffkit.evaluation.ActivityMonitor`). Layers not measured are marked "n/a".

    Args:
        history: the run's epoch records (``Trainer.fit``'s return value, or ``metrics.json`` loaded).
        ax: the axes to draw on; a new figure when ``None``.
        epoch: index into ``history`` (``-1``: the last epoch).

    Returns:
        The axes drawn on.
    """
    records = _check_history(history, ["dead_neurons"], "history")
    number, test = _record(records, epoch)
    ax = _axes(ax, (7.0, 4.5))
    ax.set_title(f"Deactivated neurons per layer, epoch {number}")
    ax.set_ylabel("deactivated units (%)")
    ax.set_xlabel("layer")
    ratios = test["dead_ratio"]
    if ratios is None:
        ax.text(0.5, 0.5, "not measured for this network", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        return ax
    values = [100 * r if r is not None else 0.0 for r in ratios]
    xs = list(range(len(values)))
    bars = ax.bar(xs, values, 0.6, color="tab:gray")
    top = max([5.0, *values]) * 1.15
    ax.set_ylim(0, min(100.0 * 1.15, top))
    if len(values) <= _ANNOTATE_MAX_LAYERS:
        for bar, r in zip(bars, ratios):
            text = "n/a" if r is None else f"{100 * r:.1f}%"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom", fontsize="small")
    _layer_ticks(ax, len(values))
    ax.grid(axis="y", alpha=0.3)
    return ax


def plot_sip_grid(history: Sequence[Mapping[str, Any]], ax: Axes | None = None, epoch: int = -1) -> Axes:
    """SIP's grid at one epoch: the test accuracy of the scores summed over each layer range ``start..end``.

    Rows are the first layer of a range, columns its last (cells below the diagonal are empty). The range SIP chose
    on the held-out split (if the run had one) is outlined in red; the best cell on the test data is starred.

    Args:
        history: the run's epoch records (``Trainer.fit``'s return value, or ``metrics.json`` loaded).
        ax: the axes to draw on; a new figure when ``None``.
        epoch: index into ``history`` (``-1``: the last epoch).

    Returns:
        The axes drawn on.
    """
    import numpy as np

    records = _check_history(history, ["sip_grid"], "history")
    number, test = _record(records, epoch)
    ax = _axes(ax, (6.0, 5.0))
    from matplotlib import patheffects
    from matplotlib.patches import Rectangle
    grid = np.array([[math.nan if v is None else 100 * v for v in row] for row in test["sip_grid"]], dtype=float)
    n_layers = grid.shape[0]
    finite = grid[np.isfinite(grid)]
    lo = hi = vmin = math.nan
    if finite.size:
        # Colour scale from Tukey's lower fence: a weak first layer's ranges (outliers far below) would otherwise
        # squeeze every other cell into one colour; cells below it are clipped (the colour bar's arrow) but keep
        # their numbers.
        lo, hi = float(finite.min()), float(finite.max())
        q1, q3 = np.percentile(finite, [25, 75])
        vmin = min(max(lo, float(q1 - 1.5 * (q3 - q1))), hi)
    image = ax.imshow(grid, cmap="viridis", origin="upper", interpolation="nearest",
                      vmin=None if math.isnan(vmin) else vmin, vmax=None if math.isnan(hi) else hi)
    ax.figure.colorbar(image, ax=ax, label="test accuracy (%)", extend="min" if lo < vmin else "neither")
    if n_layers <= _ANNOTATE_MAX_LAYERS and finite.size:
        mid = (vmin + hi) / 2
        digits = 2 if n_layers <= 6 else 1  # room for two decimals in the cells of small grids
        for i in range(n_layers):
            for j in range(i, n_layers):
                ax.text(j, i, f"{grid[i, j]:.{digits}f}", ha="center", va="center", fontsize="small",
                        color="black" if grid[i, j] > mid else "white")
    handles = []
    chosen = test.get("sip_range")
    if chosen is not None:
        s, e = int(chosen[0]), int(chosen[1])
        rect = Rectangle((e - 0.5, s - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=2.5,
                         label=f"SIP's choice (held-out): layers {s + 1}..{e + 1}")
        ax.add_patch(rect)
        handles.append(rect)
    if np.isfinite(grid).any():
        bi, bj = (int(v) for v in np.unravel_index(np.nanargmax(grid), grid.shape))
        best = Rectangle((bj - 0.4, bi - 0.4), 0.8, 0.8, fill=False, edgecolor="white", linewidth=1.5,
                         linestyle="--", label=f"best on test: layers {bi + 1}..{bj + 1}",
                         path_effects=[patheffects.withStroke(linewidth=3, foreground="black")])
        ax.add_patch(best)
        handles.append(best)
    _layer_ticks(ax, n_layers, "x")
    _layer_ticks(ax, n_layers, "y")
    ax.set_xlabel("last layer of the range (end)")
    ax.set_ylabel("first layer of the range (start)")
    ax.set_title(f"SIP accuracy grid (test), epoch {number}")
    ax.legend(handles=handles, fontsize="small", loc="lower left", framealpha=0.9)
    return ax


# -- training curves (metrics.jsonl) ----------------------------------------------------------------------------------
def _split_records(records: Any, source: str = "records") -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """``(step records, epoch records)`` of ``records``, by their ``"kind"`` (a record without one, as
    ``Trainer.step_history`` holds them, is a step record if it has ``"batches"``). Step records without a fractional
    epoch (a loader without a length) are left out."""
    if not isinstance(records, Sequence) or isinstance(records, (str, bytes)):
        raise ValueError(f"{source} must be a list of step and epoch records, got {type(records).__name__}")
    steps, epochs = [], []
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"{source}: record {i} is a {type(rec).__name__}, not a dict")
        kind = rec.get("kind", "step" if "batches" in rec else "epoch")
        if kind == "step" and rec.get("epoch") is not None and rec.get("train_loss") is not None:
            steps.append(rec)
        elif kind == "epoch":
            epochs.append(rec)
    if not steps:
        raise ValueError(f"{source} holds no step records: train with step records on (Trainer.fit(log_every=N), "
                         f"ffkit train --log-interval N with N > 0)")
    return steps, epochs


def _epoch_axis(ax: Axes, steps: Sequence[Mapping[str, Any]]) -> None:
    """The x axis in epochs from 0 to the last record's, with integer major ticks (a fractional epoch is no epoch
    number) and unlabelled minor ticks between them."""
    from matplotlib.ticker import AutoMinorLocator, MaxNLocator

    top = max(1.0, math.ceil(max(float(r["epoch"]) for r in steps) - 1e-9))
    ax.set_xlim(0.0, 1.02 * top)  # room for the markers at the last epoch's end
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_minor_locator(AutoMinorLocator())
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _layer_legend(ax: Axes, colors: list[Any], extra: Sequence[Any] = ()) -> None:
    """A legend entry per layer (a colour bar beyond :data:`_LEGEND_MAX_LAYERS` layers), then ``extra`` handles."""
    from matplotlib.lines import Line2D

    n_layers = len(colors)
    handles = list(extra)
    if n_layers > _LEGEND_MAX_LAYERS:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import ListedColormap, Normalize

        mappable = ScalarMappable(norm=Normalize(1, n_layers), cmap=ListedColormap(colors))
        ax.figure.colorbar(mappable, ax=ax, label="layer")
    else:
        layers = [Line2D([], [], color=c, linewidth=1.6, label=f"layer {i + 1}") for i, c in enumerate(colors)]
        handles = layers + handles
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def _layer_series(records: Sequence[Mapping[str, Any]], key: str, layer: int, scale: float = 1.0) -> list[float]:
    """Layer ``layer``'s value of the per-layer field ``key`` in each record, times ``scale``; NaN where a record has
    none (a gap in the line)."""
    series = []
    for r in records:
        values = r.get(key)
        v = values[layer] if values is not None and layer < len(values) else None
        series.append(scale * v if v is not None else math.nan)
    return series


def plot_train_curves(records: Sequence[Mapping[str, Any]], ax: Axes | None = None, metric: str = "loss") -> Axes:
    """Each layer's train loss or train accuracy over the epochs, one point per step record.

    Each point is the mean over the batches since the previous record (``log_every`` batches), so a one-epoch run
    still draws a curve per layer. With ``metric="accuracy"``, each layer's test accuracy at the end of each epoch
    (the epoch records' ``test.per_layer``) is marked with a diamond of the layer's colour.

    Args:
        records: step and epoch records: ``RUN_DIR/metrics.jsonl`` loaded
            (:func:`ffkit.train.runlog.read_records`), or ``trainer.step_history + trainer.history``.
        ax: the axes to draw on; a new figure when ``None``.
        metric: ``"loss"`` (``train_loss``) or ``"accuracy"`` (``train_acc``, in %).

    Returns:
        The axes drawn on.
    """
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}")
    steps, epochs = _split_records(records)
    ax = _axes(ax, (7.5, 4.5))
    key, scale = ("train_loss", 1.0) if metric == "loss" else ("train_acc", 100.0)
    xs = [float(r["epoch"]) for r in steps]
    n_layers = max(len(r[key]) for r in steps)
    colors = _layer_colors(n_layers)
    marker = "o" if len(xs) <= 40 else None  # a few points: show where the records are
    for layer in range(n_layers):
        ax.plot(xs, _layer_series(steps, key, layer, scale), color=colors[layer], marker=marker, markersize=2.5,
                linewidth=1.4)
    extra = []
    if metric == "accuracy":
        tested = [r for r in epochs if isinstance(r.get("test"), Mapping) and r["test"].get("per_layer")]
        for rec in tested:
            for layer, v in enumerate(rec["test"]["per_layer"][:n_layers]):
                ax.plot([float(rec["epoch"])], [100 * v], linestyle="none", marker="D", markersize=6,
                        markerfacecolor=colors[layer], markeredgecolor="black", markeredgewidth=0.6)
        if tested:
            from matplotlib.lines import Line2D

            extra.append(Line2D([], [], linestyle="none", marker="D", markerfacecolor="white",
                                markeredgecolor="black", label="test accuracy (epoch end)"))
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Per-layer train accuracy")
    else:
        ax.set_ylabel("train loss")
        ax.set_title("Per-layer train loss")
    _epoch_axis(ax, steps)
    _layer_legend(ax, colors, extra)
    return ax


def plot_goodness_curves(records: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Axes:
    """Each layer's mean goodness of positive (solid) and negative (dashed) training data over the epochs.

    From the step records' ``train_goodness_pos`` and ``train_goodness_neg``
    (:meth:`~ffkit.objectives.Objective.batch_goodness`): for label-input networks the goodness of the positive
    samples and of the negative samples as trained on; for channel-wise networks the true class's score against the
    mean of the other classes'. Training pushes them apart. Engines that record none (the backprop baselines) get a
    note instead.

    Args:
        records: step and epoch records (see :func:`plot_train_curves`).
        ax: the axes to draw on; a new figure when ``None``.

    Returns:
        The axes drawn on.
    """
    steps, _ = _split_records(records)
    ax = _axes(ax, (7.5, 4.5))
    ax.set_title("Goodness of positive and negative training data")
    ax.set_ylabel("mean goodness")
    _epoch_axis(ax, steps)
    with_goodness = [r for r in steps if r.get("train_goodness_pos") is not None]
    if not with_goodness:
        ax.text(0.5, 0.5, "not recorded for this trainer", ha="center", va="center", transform=ax.transAxes)
        return ax
    xs = [float(r["epoch"]) for r in with_goodness]
    n_layers = max(len(r["train_goodness_pos"]) for r in with_goodness)
    colors = _layer_colors(n_layers)
    for layer in range(n_layers):
        for key, style in (("train_goodness_pos", "-"), ("train_goodness_neg", "--")):
            ax.plot(xs, _layer_series(with_goodness, key, layer), color=colors[layer], linestyle=style,
                    linewidth=1.4)
    from matplotlib.lines import Line2D

    styles = [Line2D([], [], color="gray", linestyle="-", label="positive data"),
              Line2D([], [], color="gray", linestyle="--", label="negative data")]
    _layer_legend(ax, colors, styles)
    return ax


def plot_lr_throughput(records: Sequence[Mapping[str, Any]], ax: Axes | None = None) -> Axes:
    """The learning rate (left axis) and the training throughput in images/s (right axis) over the epochs.

    Args:
        records: step and epoch records (see :func:`plot_train_curves`).
        ax: the axes to draw on; a new figure when ``None``.

    Returns:
        The axes drawn on (the images/s axis is its twin).
    """
    steps, _ = _split_records(records)
    ax = _axes(ax, (7.5, 4.5))
    xs = [float(r["epoch"]) for r in steps]
    lr = [r["lr"] if r.get("lr") is not None else math.nan for r in steps]
    (lr_line,) = ax.plot(xs, lr, color="tab:blue", linewidth=1.6, label="learning rate")
    ax.set_ylabel("learning rate", color="tab:blue")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    twin = ax.twinx()
    speed = [r["train_images_per_s"] if r.get("train_images_per_s") is not None
             and math.isfinite(r["train_images_per_s"]) else math.nan for r in steps]
    (speed_line,) = twin.plot(xs, speed, color="tab:orange", linewidth=1.2, marker="." if len(xs) <= 40 else None,
                              label="images/s")
    twin.set_ylabel("training images/s", color="tab:orange")
    finite = [v for v in speed if math.isfinite(v)]
    twin.set_ylim(0, max(finite) * 1.15 if finite else 1.0)
    _epoch_axis(ax, steps)
    ax.set_title("Learning rate and throughput")
    ax.legend(handles=[lr_line, speed_line], fontsize="small", loc="lower left", framealpha=0.9)
    return ax


# -- a run directory --------------------------------------------------------------------------------------------------
def _load_history(run_dir: Path) -> tuple[list[Mapping[str, Any]], str]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        why = "no such directory" if not run_dir.is_dir() else "the directory has no metrics.json"
        raise ValueError(
            f"{path} not found ({why}): `ffkit plot` reads the metrics.json that `ffkit train --out {run_dir}` "
            "writes after each epoch"
        )
    try:
        history = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-run `ffkit train` to write it again") from None
    return _check_history(history, PLOT_FILES, str(path)), str(path)


def _load_records(run_dir: Path) -> list[Mapping[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (empty when there is none)."""
    from ._records import METRICS_JSONL, read_records

    path = run_dir / METRICS_JSONL
    return list(read_records(path)) if path.is_file() else []


def plot_run(
    run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None, formats: Sequence[str] = ("png",)
) -> list[Path]:
    """Draw a run's plots from ``RUN_DIR/metrics.json`` and ``RUN_DIR/metrics.jsonl``, one file each
    (``ffkit plot RUN_DIR``).

    From ``metrics.json`` (the epoch records): ``layer_accuracy``, ``goodness``, ``dead_neurons`` and ``sip_grid``
    (:data:`PLOT_FILES`); the epoch-wise plots show the last epoch, and ``layer_accuracy`` of a one-epoch run shows
    bars by layer. From the step records of ``metrics.jsonl``, when it has some (``ffkit train --log-interval N``,
    on by default): ``train_loss``, ``train_accuracy`` (with each layer's test accuracy at each epoch's end),
    ``train_goodness`` and ``lr_throughput`` (:data:`CURVE_FILES`), against the epoch with integer ticks. A run
    directory of an older ffkit (``metrics.json`` only) gets the first four; a run still in its first epoch (step
    records, no ``metrics.json`` yet) the curves only. Each plot is written in every format of ``formats``.
    Figures are drawn without pyplot, so this works on machines without a display and leaves no figures open.

    Args:
        run_dir: a run directory written by ``ffkit train --out RUN_DIR`` (or :meth:`Trainer.fit` with ``out_dir``).
        out_dir: where to write the files (created if needed); ``run_dir`` when ``None``.
        formats: file formats, any of ``"png"``, ``"pdf"``, ``"svg"``.

    Returns:
        The paths written, plot by plot (:data:`PLOT_FILES`, then :data:`CURVE_FILES`) and, within a plot, in the
        order of ``formats``.

    Raises:
        ValueError: ``metrics.json`` is missing (and ``metrics.jsonl`` has no step records) or is not JSON, lacks the
            fields the plots need (written by an older ffkit), or a format is unknown.
        ImportError: matplotlib is not installed.
    """
    if isinstance(formats, str):
        formats = (formats,)
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty selection of {list(FORMATS)}, got {list(formats)}")
    run = Path(run_dir)
    records = _load_records(run)
    has_steps = any(r.get("kind") == "step" and r.get("epoch") is not None for r in records)
    history = _load_history(run)[0] if (run / "metrics.json").is_file() or not has_steps else None
    out = Path(out_dir) if out_dir is not None else run
    _matplotlib()
    from matplotlib.figure import Figure

    draw: dict[str, tuple[Any, Any, tuple[float, float]]] = {
        "layer_accuracy": (plot_layer_accuracy, history, (7.5, 4.5)),
        "goodness": (plot_goodness, history, (7.0, 4.5)),
        "dead_neurons": (plot_dead_neurons, history, (7.0, 4.5)),
        "sip_grid": (plot_sip_grid, history, (6.5, 5.5)),
        "train_loss": (plot_train_curves, records, (7.5, 4.5)),
        "train_accuracy": (lambda r, ax: plot_train_curves(r, ax=ax, metric="accuracy"), records, (7.5, 4.5)),
        "train_goodness": (plot_goodness_curves, records, (7.5, 4.5)),
        "lr_throughput": (plot_lr_throughput, records, (7.5, 4.5)),
    }
    names = (PLOT_FILES if history is not None else ()) + (CURVE_FILES if has_steps else ())
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in names:
        fn, data, size = draw[name]
        fig = Figure(figsize=size, layout="constrained")
        fn(data, ax=fig.add_subplot())
        for fmt in dict.fromkeys(formats):
            path = out / f"{name}.{fmt}"
            fig.savefig(path, dpi=150, format=fmt)
            written.append(path)
    return written
