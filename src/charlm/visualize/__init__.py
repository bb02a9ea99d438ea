"""See what the network learned: text shaded by one cell, next-character guesses, interpretable
cells, gate saturation (Karpathy 2015 blog; Karpathy, Johnson & Fei-Fei 2015 paper), and the
evolution of samples during training.

``charlm-visualize ckpt=... text=...`` (or ``python -m charlm.cli.visualize``) writes the pages; the
``visualize`` training callback writes them at the end of every run.
"""

from charlm.visualize.activations import Trace, gate_saturation, next_char_stats, trace
from charlm.visualize.build import CellsResult, visualize_samples, visualize_text
from charlm.visualize.cells import find_cells, text_features

__all__ = [
    "CellsResult",
    "Trace",
    "find_cells",
    "gate_saturation",
    "next_char_stats",
    "text_features",
    "trace",
    "visualize_samples",
    "visualize_text",
]
