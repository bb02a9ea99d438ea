"""charlm.visualize.page: the cells page and the samples timeline, self-contained, opened in a real
headless Chromium: the values shown are the model's activations as PyTorch computes them."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from charlm.data.vocab import Vocab
from charlm.model.rnn import CharRNN
from charlm.sampling.sampler import sample
from charlm.sampling.samples_file import SAMPLE_HEADER, read_samples
from charlm.visualize import visualize_samples, visualize_text
from conftest import CODE_LINES, page_data


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
    assert page_data((out / "cells.html").read_text(encoding="utf-8"))["text"] == text
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
