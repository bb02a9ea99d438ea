"""Build the pages: trace a model over a text and write ``cells.html`` and ``cells_gates.png``; render
a run's ``samples.txt`` as ``samples.html``."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charlm.data.vocab import Vocab
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.sampling.samples_file import read_samples
from charlm.visualize.activations import Trace, gate_saturation, next_char_stats, trace
from charlm.visualize.cells import find_cells
from charlm.visualize.page import cells_page, samples_page
from charlm.visualize.saturation import saturation_png

log = logging.getLogger(__name__)


@dataclass
class CellsResult:
    """What :func:`visualize_text` wrote and computed.

    Attributes:
        html_path: the page.
        png_path: the gate-saturation plot beside it (``None`` for a plain RNN: no gates).
        html: the page's text (for ``wandb.Html``).
        trace: the activations shown.
        cells: the interpretable cells found (:func:`~charlm.visualize.cells.find_cells`).
    """

    html_path: Path
    png_path: Path | None
    html: str
    trace: Trace
    cells: list[dict]


def visualize_text(
    net: CharRNN,
    vocab: Vocab,
    text: str,
    out_dir: str | Path,
    max_chars: int | None = 2000,
    name: str = "cells",
    subtitle: str = "",
    top_k: int = 5,
) -> CellsResult:
    """Trace ``net`` over ``text`` and write ``<out_dir>/<name>.html`` and ``<name>_gates.png``.

    Args:
        net: the model (any device; it is not modified).
        vocab: its vocabulary.
        text: the characters to show (cut to ``max_chars``).
        out_dir: the folder to write to (created).
        max_chars: at most this many characters (``None``: all). Every character costs one
            recurrent step per layer in Python, and the page stores ``2 * L * H`` float32 per
            character, so keep it in the thousands.
        name: the file-name stem.
        subtitle: a line shown under the title (e.g. the checkpoint and text source).
        top_k: next-character guesses shown per character.

    Returns:
        A :class:`CellsResult`.

    Raises:
        CharLMError: if the text is empty, ``max_chars < 1``, or the text has characters outside
            the vocabulary (they are listed).
    """
    if max_chars is not None:
        if int(max_chars) < 1:
            raise CharLMError(f"max_chars={max_chars} must be >= 1 (or null for the whole text)")
        text = text[: int(max_chars)]
    if not text:
        raise CharLMError("the text to visualize is empty; give text=<file or string> with at least one character")
    ids = np.asarray(vocab.encode(text), dtype=np.int64)
    was_training = net.training
    net.eval()
    try:
        tr = trace(net, ids)
    finally:
        net.train(was_training)
    stats = next_char_stats(tr, ids, k=top_k)
    found = find_cells(tr.states, text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png_path, png_uri = None, None
    if tr.gates:
        png = saturation_png(gate_saturation(tr), title=f"{tr.cell.upper()} gate saturation over {len(text):,} characters")
        png_path = out / f"{name}_gates.png"
        png_path.write_bytes(png)
        png_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")  # the page stays self-contained
    page = cells_page(text, vocab.chars, tr, stats, found, subtitle=subtitle, saturation_png=png_uri)
    html_path = out / f"{name}.html"
    html_path.write_text(page, encoding="utf-8")
    return CellsResult(html_path=html_path, png_path=png_path, html=page, trace=tr, cells=found)


def visualize_samples(samples_txt: str | Path, out_dir: str | Path, name: str = "samples") -> tuple[Path, str]:
    """Render a run's ``samples.txt`` (from :class:`~charlm.training.callbacks.SampleText`) as a
    timeline page ``<out_dir>/<name>.html``. Returns ``(path, html)``.

    Raises:
        CharLMError: if the file is missing or holds no samples.
    """
    p = Path(samples_txt)
    if p.is_dir():
        p = p / "samples.txt"
    if not p.is_file():
        raise CharLMError(f"{p} does not exist; give a run dir or its samples.txt (written by the samples callback)")
    rows = read_samples(p)
    if not rows:
        raise CharLMError(f"{p} holds no samples (no '### step=... temperature=...' blocks)")
    page = samples_page(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.html"
    path.write_text(page, encoding="utf-8")
    return path, page
