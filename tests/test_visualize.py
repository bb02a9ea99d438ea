"""charlm-visualize: the step-by-step trace against PyTorch's own recurrent modules, the text
features, the pages opened in a real headless Chromium, the CLI, and the training callback."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.checkpoint import load_checkpoint
from charlm.cli.train import train
from charlm.data.streams import split_bounds
from charlm.data.vocab import Vocab
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.sampling.sampler import sample
from charlm.sampling.samples_file import SAMPLE_HEADER, read_samples
from charlm.visualize import (
    find_cells,
    gate_saturation,
    next_char_stats,
    text_features,
    trace,
    visualize_samples,
    visualize_text,
)
from conftest import FAST_TRAIN, compose_cfg

REPO = Path(__file__).resolve().parents[1]

# Lines with quotes, brackets and comments, so that every feature varies over the page's text.
CODE_LINES = (
    'def f(x):  # "quoted" (in a comment)\n'
    '    return g(x[0], {"k": (1, 2)})  // done\n'
    '/* a block\n   comment */ print("hello (world)")\n'
)

TRAIN = [o for o in FAST_TRAIN if not o.startswith("logger=")] + [
    "logger=default",  # W&B offline (the pages go there as wandb.Html) and CSV
    "model.hidden_size=32",
    "model.num_layers=2",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.limit_val_batches=4",
    "callbacks.samples.length=60",
    "callbacks.visualize.max_chars=400",
    "data.splits=[0.8,0.2,0.0]",
]


# ----------------------------------------------------------------------------- the trace
def _text(shakespeare_path: Path, n: int = 300) -> str:
    return shakespeare_path.read_text(encoding="utf-8")[1000 : 1000 + n]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_trace_equals_pytorch_modules(cell, shakespeare_path):
    torch.manual_seed(0)
    text = _text(shakespeare_path, 120)
    vocab = Vocab(sorted(set(shakespeare_path.read_text(encoding="utf-8"))))
    net = CharRNN(len(vocab), hidden_size=24, num_layers=2, cell=cell, embedding_dim=16, dropout=0.3).eval()
    ids = torch.tensor(vocab.encode(text))
    tr = trace(net, ids)
    T = len(text)
    assert tr.states["h"].shape == (2, T, 24)
    assert set(tr.states) == ({"h", "c"} if cell == "lstm" else {"h"})
    with torch.no_grad():
        logits, state = net(ids[None])
        out, _ = net.rnn(net.embedding(ids[None]))
    np.testing.assert_allclose(tr.logits, logits[0].numpy(), atol=2e-5)
    np.testing.assert_allclose(tr.states["h"][-1], out[0].numpy(), atol=2e-6)  # last layer, every step
    np.testing.assert_allclose(tr.states["h"][:, -1], state[0][:, 0].numpy(), atol=2e-6)  # every layer, last step
    # every layer's state at a few earlier steps = PyTorch's final state over the prefix
    for t in (0, 17, 63):
        with torch.no_grad():
            _, st = net(ids[None, : t + 1])
        np.testing.assert_allclose(tr.states["h"][:, t], st[0][:, 0].numpy(), atol=2e-6)
        if cell == "lstm":
            np.testing.assert_allclose(tr.states["c"][:, t], st[1][:, 0].numpy(), atol=2e-6)
    gates = {"lstm": {"i", "f", "o"}, "gru": {"r", "z"}, "rnn": set()}[cell]
    assert set(tr.gates) == gates
    for g in tr.gates.values():
        assert g.shape == (2, T, 24) and g.min() >= 0 and g.max() <= 1
    sat = gate_saturation(tr)
    for s in sat.values():
        assert s.shape == (2, 24, 2) and (s.sum(-1) <= 1 + 1e-12).all()


def test_next_char_stats(shakespeare_path):
    torch.manual_seed(1)
    text = _text(shakespeare_path, 50)
    vocab = Vocab(sorted(set(shakespeare_path.read_text(encoding="utf-8"))))
    net = CharRNN(len(vocab), hidden_size=16, num_layers=1).eval()
    ids = vocab.encode(text)
    st = next_char_stats(trace(net, ids), ids)
    with torch.no_grad():
        logp = torch.log_softmax(net(torch.tensor([ids]))[0][0], -1)
    assert st["top_ids"].shape == (50, 5)
    assert (st["top_ids"][:, 0] == logp.argmax(-1).numpy()).all()
    np.testing.assert_allclose(st["top_probs"][:, 0], logp.max(-1).values.exp().numpy(), rtol=1e-5)
    assert (np.diff(st["top_probs"], axis=1) <= 0).all()
    np.testing.assert_allclose(st["loss"][:-1], -logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy(), rtol=1e-5)
    assert math.isnan(st["loss"][-1])


def test_text_features():
    text = 'a "b" (c [d]) # x\nAB: y\n'
    f = text_features(text)
    bits = {k: "".join(str(int(v) % 10) for v in a) for k, a in f.items()}
    assert bits["in_quotes"] == "001110000000000000000000"
    assert bits["line_position"] == "123456789012345670123450"
    assert bits["bracket_depth"] == "000000111221000000000000"
    assert bits["in_comment"] == "000000000000001110000000"
    assert bits["word_position"] == "101230120123401010123010"
    assert bits["caps_line"] == "000000000000000000111100"
    assert bits["in_single_quotes"] == "0" * len(text)
    code = "def f(x):\n    s = 'a(b'\n\tif x:\n"
    cf = {k: "".join(str(int(v) % 10) for v in a) for k, a in text_features(code).items()}
    assert cf["indentation"] == "0000000000" + "12344444444440" + "1111110"  # 4 spaces, then a tab
    assert cf["in_single_quotes"] == "0000000000" + "00000000111110" + "0000000"
    block = text_features("x /* y */ z // w\nv")["in_comment"]
    assert "".join(str(int(v)) for v in block) == "001111111000111100"


def test_find_cells_finds_a_planted_cell(shakespeare_path):
    text = _text(shakespeare_path, 400)
    rng = np.random.default_rng(0)
    states = {"h": rng.normal(size=(2, 400, 8)).astype(np.float32), "c": rng.normal(size=(2, 400, 8)).astype(np.float32)}
    pos = text_features(text)["line_position"]
    states["c"][1, :, 5] = -0.02 * pos + 0.1  # a perfect (negative) line-length cell
    found = {e["feature"]: e for e in find_cells(states, text)}
    best = found["line_position"]["cells"][0]
    assert (best["layer"], best["state"], best["unit"]) == (1, "c", 5)
    assert best["r"] == pytest.approx(-1.0, abs=1e-6)
    assert found["in_quotes"]["constant"] and found["in_quotes"]["cells"] == []  # Shakespeare has no "


def test_visualize_text_errors_and_rnn(tmp_path, shakespeare_path):
    vocab = Vocab(sorted(set(shakespeare_path.read_text(encoding="utf-8"))))
    net = CharRNN(len(vocab), hidden_size=8, num_layers=1, cell="rnn")
    res = visualize_text(net, vocab, _text(shakespeare_path, 30), tmp_path)
    assert res.png_path is None and res.html_path.is_file()  # a plain RNN has no gates to plot
    with pytest.raises(CharLMError, match="not in the model's vocabulary"):
        visualize_text(net, vocab, "{braces}", tmp_path)
    with pytest.raises(CharLMError, match="empty"):
        visualize_text(net, vocab, "", tmp_path)


# ----------------------------------------------------------------------------- a trained run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, shared_data):
    """A 20-step run on Tiny Shakespeare plus lines of code-like text (so quotes, brackets and
    comments occur), with the default callbacks: samples and the visualize callback."""
    corpus = tmp_path_factory.mktemp("corpus") / "mixed.txt"
    play = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tail = "".join(CODE_LINES + play[36_000 + 200 * i : 36_200 + 200 * i] for i in range(40))
    corpus.write_text(play[:36_000] + tail, encoding="utf-8")  # the val split (last 20%) is mixed
    out = tmp_path_factory.mktemp("run")
    train(compose_cfg("train", out, TRAIN + ["data=file", f"data.path={corpus}", "seed=3"]))
    return out


@pytest.fixture(scope="module")
def page(tmp_path_factory, shared_data):
    """A cells page for a seeded, untrained 2x32 LSTM over 400 characters of mixed text (code
    lines and Tiny Shakespeare), and a samples timeline of its samples: ``(net, vocab, text, dir)``."""
    play = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    text = (CODE_LINES + play[2000:2100] + CODE_LINES)[:400].ljust(400, ".")
    vocab = Vocab(sorted(set(play + CODE_LINES)))
    torch.manual_seed(5)
    net = CharRNN(len(vocab), hidden_size=32, num_layers=2, cell="lstm").eval()
    out = tmp_path_factory.mktemp("page")
    res = visualize_text(net, vocab, text, out)
    assert res.png_path is not None and res.png_path.read_bytes().startswith(b"\x89PNG")
    blocks = []
    for step in (0, 100, 200):
        for temperature in (1.0, 0.6):
            sample_text = sample(net, vocab, "\n", 60, temperature=temperature, seed=step)[0]
            blocks.append(f"{SAMPLE_HEADER.format(step=step, temperature=temperature)}\n{sample_text}\n")
    (out / "samples.txt").write_text("\n".join(blocks) + "\n", encoding="utf-8")
    visualize_samples(out / "samples.txt", out)
    return net, vocab, text, out


@pytest.mark.slow
def test_callback_writes_pages(run_dir):
    vis = run_dir / "visualize"
    html = (vis / "cells.html").read_text(encoding="utf-8")
    png = (vis / "cells_gates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (vis / "samples.html").is_file()
    data = _page_data(html)
    assert len(data["text"]) == 400 and data["num_layers"] == 2 and set(data["states"]) == {"c", "h"}
    source = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["charlm"]["data"]["source"]
    full = Path(source).read_text(encoding="utf-8")
    begin = split_bounds(len(full), (0.8, 0.2, 0.0))[1][0]
    assert data["text"] == full[begin : begin + 400]  # held-out text: the start of the val split
    # W&B (offline) received both pages as HTML media and the plot as an image
    logged = [p.read_text(encoding="utf-8") for p in run_dir.glob("wandb/offline-run-*/files/media/html/**/*.html")]
    assert any(_page_data(h)["text"] == data["text"] for h in logged if "charlm-data" in h)
    assert any('class="sample"' in h for h in logged)
    assert list(run_dir.glob("wandb/offline-run-*/files/media/images/**/*.png"))


def _page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="charlm-data">(.*?)</script>', html, re.S)
    assert m, "the page embeds its data"
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_page_is_self_contained(page):
    html = (page[3] / "cells.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<script src" not in html and "@import" not in html and "url(http" not in html and "@font-face" not in html


# ----------------------------------------------------------------------------- Chromium
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
    "--window-size=1200,900",
]


def _ensure_chromium() -> tuple[str, str]:
    """Debian's chromium and chromium-driver; installed with apt-get when missing (as root)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], env=env, capture_output=True, timeout=900)
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("headless Chromium is needed: apt-get install -y chromium chromium-driver")
    return browser, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install -e '.[dev]' (selenium)")
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _ensure_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _open(drv, path: Path) -> None:
    drv.get(path.resolve().as_uri())
    drv.get_log("browser")  # nothing before this page
    drv.refresh()


def _console_errors(drv) -> list:
    return [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def _backgrounds(drv) -> list[str]:
    return drv.execute_script("return Array.from(document.querySelectorAll('#text .ch'), s => s.style.backgroundColor)")


def _values(drv, ts) -> list[str]:
    return drv.execute_script("return arguments[0].map(t => document.querySelectorAll('#text .ch')[t].dataset.v)", list(ts))


def test_cells_page_in_chromium(browser, page):
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    drv = browser
    net, vocab, text, out = page
    assert _page_data((out / "cells.html").read_text(encoding="utf-8"))["text"] == text
    _open(drv, out / "cells.html")
    assert _console_errors(drv) == []
    spans = drv.find_elements(By.CSS_SELECTOR, "#text .ch")
    assert len(spans) == len(text) == 400
    resources = drv.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
    assert all(r.startswith("data:") for r in resources), resources  # nothing fetched from anywhere

    # The values shown = the model's activations computed directly by PyTorch's nn.LSTM.
    ids = torch.tensor(vocab.encode(text))
    before = _backgrounds(drv)
    Select(drv.find_element(By.ID, "layer")).select_by_value("1")
    Select(drv.find_element(By.ID, "state")).select_by_value("c")
    unit = drv.find_element(By.ID, "unit")
    unit.clear()
    unit.send_keys("7")
    after = _backgrounds(drv)
    assert sum(a != b for a, b in zip(before, after)) > 100, "changing the cell re-shades the text"

    def c_direct(t: int, layer: int, unit: int) -> float:
        with torch.no_grad():
            _, (h, c) = net(ids[None, : t + 1])  # PyTorch's nn.LSTM over the prefix
        return float(c[layer, 0, unit])

    ts = [0, 5, 123, 399]
    for t, v in zip(ts, _values(drv, ts)):
        assert float(v) == pytest.approx(c_direct(t, 1, 7), abs=1e-6), t
    with torch.no_grad():
        h42 = float(net(ids[None, :43])[1][0][0, 0, 3])
    assert drv.execute_script("return charlm.value(0, 'h', 3, 42)") == pytest.approx(h42, abs=1e-6)

    # Hover: the top-5 guesses for the next character, with the model's probabilities.
    ActionChains(drv).move_to_element(spans[10]).perform()
    info = drv.find_element(By.ID, "info").text
    with torch.no_grad():
        p = torch.softmax(net(ids[None, :11])[0][0, -1], -1)
    top = p.topk(5)
    assert f"{top.values[0].item():.3f}" in info and "loss" in info
    assert len(drv.find_elements(By.CSS_SELECTOR, "#info .p")) == 5

    # Shading by the loss of the actual next character.
    Select(drv.find_element(By.ID, "mode")).select_by_value("loss")
    assert _backgrounds(drv) != after
    with torch.no_grad():
        logp = torch.log_softmax(net(ids[None])[0][0], -1)
    for t, v in zip([3, 200], _values(drv, [3, 200])):
        assert float(v) == pytest.approx(-logp[t, ids[t + 1]].item(), abs=1e-4)
    assert _values(drv, [399]) == [""]  # the last character has no next one

    # The found cells: every feature varies in this text; clicking one selects it.
    buttons = drv.find_elements(By.CSS_SELECTOR, "button.cell")
    assert len(buttons) >= 6 * 2
    b = buttons[0]
    b.click()
    assert drv.find_element(By.ID, "unit").get_attribute("value") == b.get_attribute("data-unit")
    assert Select(drv.find_element(By.ID, "mode")).first_selected_option.get_attribute("value") == "cell"
    assert drv.find_element(By.CSS_SELECTOR, "img.sat").get_property("naturalWidth") > 100
    assert _console_errors(drv) == []

    # A link can preselect the cell.
    drv.get((out / "cells.html").resolve().as_uri() + "#cell=1,c,9")
    assert drv.find_element(By.ID, "unit").get_attribute("value") == "9"
    assert float(_values(drv, [42])[0]) == pytest.approx(float(c_direct(42, 1, 9)), abs=1e-6)
    assert _console_errors(drv) == []

    shot = Image.open(io.BytesIO(drv.get_screenshot_as_png())).convert("RGB")
    arr = np.asarray(shot)
    assert shot.size[0] >= 800 and len(np.unique(arr.reshape(-1, 3), axis=0)) > 50
    assert (arr < 200).any(axis=-1).mean() > 0.02, "the screenshot is blank"


def test_samples_page_in_chromium(browser, page):
    from selenium.webdriver.common.by import By

    rows = read_samples(page[3] / "samples.txt")
    assert len(rows) == 6
    _open(browser, page[3] / "samples.html")
    assert _console_errors(browser) == []
    entries = browser.find_elements(By.CSS_SELECTOR, ".entry")
    assert [int(e.get_attribute("data-step")) for e in entries] == [0, 0, 100, 100, 200, 200]
    texts = browser.execute_script("return Array.from(document.querySelectorAll('.sample'), s => s.textContent)")
    assert sorted(texts) == sorted(r["text"] for r in rows)


# ----------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_writes_pages_and_prints_paths(run_dir, tmp_path):
    out = tmp_path / "pages"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "charlm.cli.visualize", f"ckpt={run_dir}", "text='\"Hello (world)\", he said.'",
         f"samples={run_dir}", f"out={out}", f"hydra.run.dir={tmp_path / 'hydra'}"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.split()
    assert printed == [str(out / "cells.html"), str(out / "samples.html")]
    data = _page_data((out / "cells.html").read_text(encoding="utf-8"))
    assert data["text"] == '"Hello (world)", he said.'
    assert (out / "cells_gates.png").is_file()


@pytest.mark.slow
def test_cli_val_slice_and_errors(run_dir, tmp_path, compose):
    from charlm.cli.visualize import run

    cfg = compose("visualize", tmp_path, [f"ckpt={run_dir}/checkpoints/last.ckpt", "max_chars=150", "offset=10"])
    (path,) = run(cfg)
    data = _page_data(path.read_text(encoding="utf-8"))
    source = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["charlm"]["data"]["source"]
    full = Path(source).read_text(encoding="utf-8")
    begin = split_bounds(len(full), (0.8, 0.2, 0.0))[1][0]
    assert data["text"] == full[begin + 10 : begin + 160]
    with pytest.raises(CharLMError, match="nothing to visualize"):
        run(compose("visualize", tmp_path, []))
    with pytest.raises(CharLMError, match="not in the model's vocabulary"):
        run(compose("visualize", tmp_path, [f"ckpt={run_dir}", "text='Zürich'"]))
    with pytest.raises(CharLMError, match="split"):
        run(compose("visualize", tmp_path, [f"ckpt={run_dir}", "split=dev"]))
