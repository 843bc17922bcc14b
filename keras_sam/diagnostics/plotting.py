"""Drawing `LossLandscape`s with matplotlib, without a display.

matplotlib is not a dependency of the library: install it with the `[plot]`
extra (`pip install "keras-sam[plot]"`). Without it, `plot_loss_landscape`
raises an ImportError that says so; the rest of `keras_sam.diagnostics`
works without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keras_sam import _validation as check
from keras_sam.diagnostics.landscape import LossLandscape

__all__ = ["plot_loss_landscape"]

_NEEDS_MATPLOTLIB = (
    'plot_loss_landscape needs matplotlib; install it with: pip install "keras-sam[plot]"'
)


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_NEEDS_MATPLOTLIB) from error
    return Figure


def plot_loss_landscape(
    landscapes: LossLandscape | Sequence[LossLandscape],
    labels: Sequence[str] | None = None,
    *,
    ax=None,
    title: str | None = None,
):
    """Draws 1-D landscapes as curves on one axes, or 2-D ones as contours.

    Args:
        landscapes: one `LossLandscape` or a sequence of them, all lines or
            all planes. Planes are drawn side by side with the same contour
            levels, so that their basins compare.
        labels: one legend entry (lines) or panel title (planes) per
            landscape. Defaults to `None` (no labels).
        ax: a matplotlib `Axes` to draw into (lines, or a single plane). By
            default a new `matplotlib.figure.Figure` is made, which needs no
            display and no pyplot state.
        title: the figure's title. Defaults to `None`.

    Returns:
        The `matplotlib.figure.Figure` drawn on.

    Raises:
        ImportError: matplotlib is not installed (`pip install "keras-sam[plot]"`).

    Example:

    ```python
    sgd = loss_landscape(sgd_model, (x_test, y_test))
    sam = loss_landscape(sam_model, (x_test, y_test))
    figure = plot_loss_landscape([sgd, sam], ["SGD", "SAM"])
    figure.savefig("landscape.png")
    ```
    """
    Figure = _figure_class()  # first: without matplotlib nothing else matters
    if isinstance(landscapes, LossLandscape):
        landscapes = [landscapes]
    landscapes = list(landscapes)
    if not landscapes or not all(isinstance(s, LossLandscape) for s in landscapes):
        raise check.InvalidArgumentError(
            "`landscapes` must be a `LossLandscape` or a non-empty sequence of them "
            f"(from `loss_landscape`). Received: {landscapes!r}."
        )
    dimensions = {s.ndim for s in landscapes}
    if len(dimensions) > 1:
        raise check.InvalidArgumentError(
            "`landscapes` must be all lines (directions=1) or all planes "
            f"(directions=2). Received dimensions {[s.ndim for s in landscapes]}."
        )
    if labels is not None and len(labels) != len(landscapes):
        raise check.InvalidArgumentError(
            f"`labels` must have one entry per landscape ({len(landscapes)}). "
            f"Received: labels={labels!r}."
        )
    planes = dimensions == {2}
    if ax is not None and planes and len(landscapes) > 1:
        raise check.InvalidArgumentError(
            "`ax` can hold only one plane; pass ax=None to get one panel per "
            f"landscape. Received {len(landscapes)} planes."
        )
    if ax is None:
        columns = len(landscapes) if planes else 1
        figure = Figure(figsize=(4.5 * columns + 0.5, 4), layout="constrained")
        axes = figure.subplots(1, columns, squeeze=False)[0]
    else:
        figure, axes = ax.figure, [ax]
    names = [None] * len(landscapes) if labels is None else list(labels)
    if planes:
        levels = _shared_levels(landscapes)
        for axes_i, landscape, name in zip(axes, landscapes, names, strict=True):
            _draw_plane(axes_i, landscape, name, levels)
    else:
        for landscape, name in zip(landscapes, names, strict=True):
            axes[0].plot(landscape.alphas, landscape.losses, marker=".", label=name)
        axes[0].set_xlabel(f"α ({_direction_name(landscapes[0])})")
        axes[0].set_ylabel("loss")
        if labels is not None:
            axes[0].legend()
    if title is not None:
        figure.suptitle(title)
    return figure


def _direction_name(landscape: LossLandscape) -> str:
    if landscape.normalization is None:
        return "random direction"
    return f"{landscape.normalization}-normalized direction"


def _shared_levels(landscapes: list[LossLandscape]):
    """The same contour levels on every panel, so that planes compare."""
    losses = np.concatenate([s.losses.reshape(-1) for s in landscapes])
    losses = losses[np.isfinite(losses)]
    if losses.size == 0 or losses.min() == losses.max():
        return None  # matplotlib's default
    return np.linspace(losses.min(), losses.max(), 16)


def _draw_plane(ax, landscape: LossLandscape, name, levels) -> None:
    # losses[i, j] is at (alphas[i], betas[j]); contour wants rows along y.
    contours = ax.contour(landscape.alphas, landscape.betas, landscape.losses.T, levels=levels)
    ax.clabel(contours, fontsize=7, fmt="%.3g")
    ax.plot([0.0], [0.0], "k+")
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_aspect("equal")
    if name is not None:
        ax.set_title(name)
