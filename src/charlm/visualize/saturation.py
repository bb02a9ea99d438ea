"""The gate-saturation figure of Karpathy, Johnson & Fei-Fei (2015), Fig. 3, as a PNG.

One panel per layer; each point is one gate unit, at (fraction of time left-saturated,
fraction of time right-saturated), one colour per gate.
"""

from __future__ import annotations

import io

import numpy as np

GATE_NAMES = {"i": "input gate", "f": "forget gate", "o": "output gate", "r": "reset gate", "z": "update gate"}
GATE_COLOURS = {"i": "#1b9e77", "f": "#d95f02", "o": "#7570b3", "r": "#1b9e77", "z": "#d95f02"}


def saturation_png(sat: dict[str, np.ndarray], title: str = "", low: float = 0.1, high: float = 0.9) -> bytes:
    """Render :func:`~charlm.visualize.activations.gate_saturation` as PNG bytes.

    Args:
        sat: ``{gate: [L, H, 2]}`` fractions left- (``[..., 0]``) and right-saturated (``[..., 1]``).
        title: the figure's title.
        low, high: the thresholds (for the axis labels).

    Returns:
        The PNG file's bytes (matplotlib, Agg backend; no display needed).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    num_layers = next(iter(sat.values())).shape[0]
    fig = Figure(figsize=(3.4 * num_layers, 3.8), dpi=100, layout="constrained")
    axes = fig.subplots(1, num_layers, squeeze=False)[0]
    for layer, ax in enumerate(axes):
        for g, a in sat.items():
            ax.scatter(a[layer, :, 0], a[layer, :, 1], s=9, alpha=0.6, c=GATE_COLOURS.get(g, "k"), label=GATE_NAMES.get(g, g))
        ax.plot([0, 1], [1, 0], color="#bbb", lw=0.8, zorder=0)  # the points cannot lie above this line
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.set_xlabel(f"fraction left-saturated (< {low:g})", fontsize=8)
        if layer == 0:
            ax.set_ylabel(f"fraction right-saturated (> {high:g})", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
