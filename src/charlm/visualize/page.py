"""Self-contained HTML pages: the text shaded by one cell, and the evolution of samples.

Both pages share one stylesheet, embed their data as JSON in the page, and load nothing from
the network (no external scripts, stylesheets or fonts): they open from a file, offline, and
inside W&B (``wandb.Html``).

The cells page stores every state as little-endian float32 (base64), so the value a character
shows is bit-for-bit the one the model computed; it is shaded on a diverging scale over [-1, 1]
(the cell state ``c``, which is unbounded, as ``tanh(c)``, as in the paper's Fig. 2).
"""

from __future__ import annotations

import base64
import html
import json
import math

import numpy as np

from charlm.units import nats_to_bits
from charlm.visualize.activations import Trace

CSS = """
:root { --fg: #1d1d1f; --muted: #6e6e73; --line: #d2d2d7; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); margin: 0; padding: 16px 20px; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; } h2 { font-size: 15px; margin: 18px 0 6px; }
.meta { color: var(--muted); margin-bottom: 10px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: center; padding: 8px 10px;
            border: 1px solid var(--line); border-radius: 6px; background: #fafafa; }
.controls label { display: inline-flex; gap: 6px; align-items: center; }
.controls input[type=number] { width: 5em; }
.legend { display: inline-flex; align-items: center; gap: 6px; }
.legend .bar { width: 160px; height: 12px; border: 1px solid var(--line); }
.text { font: 13px/1.6 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
        white-space: pre-wrap; word-break: break-all; margin-top: 10px; padding: 8px;
        border: 1px solid var(--line); border-radius: 6px; }
.ch { padding: 1px 0; }
.ch.nl { color: #aaa; }
.ch:hover, .ch.sel { outline: 1px solid #000; }
#info { position: sticky; top: 0; z-index: 2; min-height: 2.6em; margin-top: 8px; padding: 4px 8px;
        background: #fff; border-bottom: 1px solid var(--line);
        font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; }
#info .p { display: inline-block; margin-right: 8px; padding: 0 4px; border-radius: 3px; }
table.cells { border-collapse: collapse; } table.cells td, table.cells th { padding: 2px 10px;
       border-bottom: 1px solid var(--line); text-align: left; }
button.cell { font: inherit; cursor: pointer; border: 1px solid var(--line); border-radius: 4px;
       background: #fff; margin-right: 4px; }
.sample { font: 13px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
          white-space: pre-wrap; border-left: 3px solid var(--line); padding: 2px 10px; margin: 4px 0 12px; }
.step { font-weight: 600; }
img.sat { max-width: 100%; border: 1px solid var(--line); }
"""

CELLS_JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("charlm-data").textContent);
  function f32(b64) {
    const bin = atob(b64), buf = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) buf[i] = bin.charCodeAt(i);
    return new Float32Array(buf.buffer);
  }
  const S = {};  // S[state][layer] = Float32Array [T * H]
  for (const s of Object.keys(D.states)) S[s] = D.states[s].map(f32);
  const T = D.text.length, H = D.hidden_size;
  const NEG = [44, 123, 182], POS = [215, 48, 39], MID = [255, 255, 255];
  function mix(a, b, w) { return a.map((x, i) => Math.round(x + (b[i] - x) * w)); }
  function diverging(v) {
    const w = Math.max(-1, Math.min(1, v));
    const c = w >= 0 ? mix(MID, POS, w) : mix(MID, NEG, -w);
    return "rgb(" + c.join(",") + ")";
  }
  function sequential(w) {
    const c = mix(MID, POS, Math.max(0, Math.min(1, w)));
    return "rgb(" + c.join(",") + ")";
  }
  const box = document.getElementById("text");
  const spans = [];
  for (let t = 0; t < T; t++) {
    const ch = D.text[t], sp = document.createElement("span");
    sp.className = "ch";
    sp.dataset.i = String(t);
    if (ch === "\n") { sp.textContent = "\u21b5"; sp.classList.add("nl"); }
    else if (ch === "\t") { sp.textContent = "\u2192   "; }
    else sp.textContent = ch;
    box.appendChild(sp);
    if (ch === "\n") box.appendChild(document.createTextNode("\n"));
    spans.push(sp);
  }
  const layerSel = document.getElementById("layer"), stateSel = document.getElementById("state");
  const unitIn = document.getElementById("unit"), modeSel = document.getElementById("mode");
  const info = document.getElementById("info");
  function value(layer, state, unit, t) { return S[state][layer][t * H + unit]; }
  function current() {
    return { layer: +layerSel.value, state: stateSel.value, unit: Math.max(0, Math.min(H - 1, +unitIn.value | 0)),
             mode: modeSel.value };
  }
  function shade() {
    const c = current();
    const scale = D.loss_scale;
    for (let t = 0; t < T; t++) {
      const sp = spans[t];
      if (c.mode === "loss") {
        const l = D.loss[t];
        sp.dataset.v = l === null ? "" : String(l);
        sp.style.backgroundColor = l === null ? "#eee" : sequential(l / scale);
      } else {
        const v = value(c.layer, c.state, c.unit, t);
        sp.dataset.v = String(v);
        // c is unbounded: shaded as tanh(c), as in Karpathy, Johnson & Fei-Fei (2015), Fig. 2
        sp.style.backgroundColor = diverging(c.state === "c" ? Math.tanh(v) : v);
      }
    }
    document.getElementById("legend-cell").style.display = c.mode === "loss" ? "none" : "";
    document.getElementById("legend-loss").style.display = c.mode === "loss" ? "" : "none";
    document.getElementById("current").textContent = c.mode === "loss"
      ? "loss of the actual next character (nats)"
      : "layer " + c.layer + ", " + (c.state === "c" ? "tanh(c[" + c.unit + "])" : "h[" + c.unit + "]");
  }
  function esc(ch) {
    return ch === "\n" ? "\\n" : ch === "\t" ? "\\t" : ch === " " ? "\u2423" : ch;
  }
  function show(t) {
    const c = current(), ids = D.top_ids[t], ps = D.top_probs[t];
    let s = "<b>" + esc(D.text[t]).replace(/&/g, "&amp;").replace(/</g, "&lt;") + "</b> @" + t + " &nbsp; ";
    s += c.mode === "loss" ? "" : c.state + "[" + c.unit + "] = " + value(c.layer, c.state, c.unit, t).toFixed(4) + " &nbsp; ";
    if (D.loss[t] !== null) s += "loss " + D.loss[t].toFixed(3) + " nats &nbsp; ";
    s += "next: ";
    for (let k = 0; k < ids.length; k++) {
      const ch = esc(D.vocab[ids[k]]).replace(/&/g, "&amp;").replace(/</g, "&lt;");
      const actual = t + 1 < T && D.vocab[ids[k]] === D.text[t + 1];
      s += '<span class="p" style="background:' + sequential(ps[k]) + (actual ? ';outline:1px solid #000' : '') +
           '">' + ch + " " + ps[k].toFixed(3) + "</span>";
    }
    info.innerHTML = s;
  }
  box.addEventListener("mouseover", function (e) {
    const t = e.target.dataset && e.target.dataset.i;
    if (t !== undefined) show(+t);
  });
  for (const el of [layerSel, stateSel, unitIn, modeSel]) { el.addEventListener("change", shade); el.addEventListener("input", shade); }
  function select(layer, state, unit) {
    layerSel.value = String(layer); stateSel.value = state; unitIn.value = String(unit); modeSel.value = "cell"; shade();
  }
  document.querySelectorAll("button.cell").forEach(function (b) {
    b.addEventListener("click", function () { select(+b.dataset.layer, b.dataset.state, +b.dataset.unit); });
  });
  window.charlm = { value: value, select: select, shade: shade, T: T, H: H };
  // A link can choose what is shown: cells.html#cell=1,c,37 or cells.html#mode=loss
  function fromHash() {
    const m = /cell=(\d+),([a-z]),(\d+)/.exec(location.hash);
    if (m && +m[1] < D.num_layers && S[m[2]]) {
      layerSel.value = m[1]; stateSel.value = m[2]; unitIn.value = m[3]; modeSel.value = "cell";
    }
    if (/mode=loss/.test(location.hash)) modeSel.value = "loss";
  }
  window.addEventListener("hashchange", function () { fromHash(); shade(); });
  fromHash();
  shade();
  show(0);
})();
"""


def _json_script(obj, element_id: str) -> str:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("</", "<\\/").replace("<!--", "<\\!--")  # cannot close the script element
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def _b64_f32(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _page(title: str, body: str, script: str = "") -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}{script}</body></html>\n"
    )


def cells_page(
    text: str,
    vocab: list[str],
    tr: Trace,
    stats: dict[str, np.ndarray],
    found: list[dict],
    title: str = "charlm: what the network learned",
    subtitle: str = "",
    saturation_png: str | None = None,
) -> str:
    """The HTML of the cells page (see the module docstring).

    Args:
        text: the ``T`` characters.
        vocab: the model's characters (``top_ids`` index it).
        tr: the :class:`Trace` over ``text``.
        stats: :func:`~charlm.visualize.activations.next_char_stats` of it.
        found: :func:`~charlm.visualize.cells.find_cells` of it.
        title, subtitle: shown at the top.
        saturation_png: file name of the gate-saturation plot beside the page (shown as an image
            when given).

    Returns:
        The page as a string (UTF-8 when written).
    """
    L, H = tr.num_layers, tr.hidden_size
    loss = [None if math.isnan(x) else round(float(x), 5) for x in stats["loss"]]
    finite = [x for x in loss if x is not None]
    data = {
        "text": text,
        "vocab": list(vocab),
        "hidden_size": H,
        "num_layers": L,
        "cell": tr.cell,
        "states": {s: [_b64_f32(a[layer]) for layer in range(L)] for s, a in tr.states.items()},
        "top_ids": stats["top_ids"].tolist(),
        "top_probs": [[round(float(p), 5) for p in row] for row in stats["top_probs"]],
        "loss": loss,
        # colour saturates at the loss of a uniform guess over the vocabulary
        "loss_scale": math.log(max(len(vocab), 2)),
    }
    layer_opts = "".join(f'<option value="{i}">{i}</option>' for i in range(L))
    state_opts = "".join(f'<option value="{s}">{s}</option>' for s in tr.states)
    mean_loss = sum(finite) / len(finite) if finite else float("nan")
    rows = []
    for e in found:
        if e["constant"]:
            cells = '<span class="meta">does not vary in this text</span>'
        else:
            cells = " ".join(
                f'<button class="cell" data-layer="{c["layer"]}" data-state="{c["state"]}" data-unit="{c["unit"]}">'
                f'layer {c["layer"]} {c["state"]}[{c["unit"]}] r={c["r"]:+.2f}</button>'
                for c in e["cells"]
            )
        rows.append(f'<tr><td>{html.escape(e["feature"])}</td><td>{html.escape(e["description"])}</td><td>{cells}</td></tr>')
    sat = ""
    if saturation_png:
        sat = (
            "<h2>Gate saturation</h2><p class=\"meta\">Per layer, each gate unit's fraction of time "
            "left-saturated (&lt; 0.1) against right-saturated (&gt; 0.9), as in Karpathy, Johnson &amp; "
            f"Fei-Fei (2015), Fig. 3.</p><img class=\"sat\" src=\"{html.escape(saturation_png)}\" alt=\"gate saturation\">"
        )
    body = f"""
<h1>{html.escape(title)}</h1>
<div class="meta">{html.escape(subtitle)} {tr.cell.upper()} {L}&times;{H}; {len(text):,} characters;
mean loss {mean_loss:.3f} nats/char ({nats_to_bits(mean_loss):.3f} bpc). Hover a character for the
model's top-{stats["top_ids"].shape[1]} guesses for the next one.</div>
<div class="controls">
  <label>shade by <select id="mode"><option value="cell">cell</option><option value="loss">loss of next char</option></select></label>
  <label>layer <select id="layer">{layer_opts}</select></label>
  <label>state <select id="state">{state_opts}</select></label>
  <label>unit <input id="unit" type="number" min="0" max="{H - 1}" value="0"></label>
  <span id="current"></span>
  <span class="legend" id="legend-cell">-1 <span class="bar" style="background:linear-gradient(to right, rgb(44,123,182), #fff, rgb(215,48,39))"></span> +1</span>
  <span class="legend" id="legend-loss" style="display:none">0 <span class="bar" style="background:linear-gradient(to right, #fff, rgb(215,48,39))"></span> &ge; ln V = {data["loss_scale"]:.2f} nats</span>
</div>
<div id="info"></div>
<div class="text" id="text"></div>
<h2>Cells that track simple features</h2>
<p class="meta">Each cell's activation correlated (Pearson r) with a feature of the text; click to shade by it.</p>
<table class="cells"><tr><th>feature</th><th>meaning</th><th>best cells</th></tr>{"".join(rows)}</table>
{sat}
"""
    script = _json_script(data, "charlm-data") + f"<script>{CELLS_JS}</script>"
    return _page(title, body, script)


def samples_page(samples: list[dict], title: str = "charlm: evolution of samples during training") -> str:
    """The HTML of a samples timeline: one block per (step, temperature), in step order.

    Args:
        samples: ``[{"step": int, "temperature": float, "text": str}, ...]`` as
            :func:`charlm.sampling.samples_file.read_samples` returns.
    """
    items = sorted(samples, key=lambda r: (r["step"], -r["temperature"]))
    blocks = []
    for r in items:
        blocks.append(
            f'<div class="entry" data-step="{r["step"]}"><span class="step">step {r["step"]:,}</span> '
            f'<span class="meta">temperature {r["temperature"]:g}</span>'
            f'<div class="sample">{html.escape(r["text"])}</div></div>'
        )
    body = (
        f"<h1>{html.escape(title)}</h1><div class=\"meta\">{len(items)} samples, from the same prime "
        "at every validation (as in the blog's &ldquo;evolution of samples while training&rdquo;).</div>"
        + "".join(blocks)
    )
    return _page(title, body)
