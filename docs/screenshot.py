"""Re-make docs/visualize.png, the README's picture of charlm-visualize, from relative paths only.

In an empty folder holding ``data`` (a link to the corpora, e.g. ``ln -s $CHARLM_DATA_DIR data``)
and with ``CHARLM_DATA_DIR`` unset, so that the page names ``data/...`` and no machine's path:

    charlm-train model.hidden_size=128 trainer.max_steps=250 trainer.val_check_interval=250 \\
        logger=csv paths.data_dir=data hydra.run.dir=. '~callbacks.visualize'
    charlm-visualize ckpt=checkpoints/last.ckpt offset=2000 max_chars=520 out=page hydra.run.dir=vis
    python <repo>/docs/screenshot.py page/cells.html <repo>/docs/visualize.png '#cell=0,c,35'

The last argument preselects the cell shown (``#cell=layer,state,unit``, a cell the page lists).
Needs selenium and Debian's chromium + chromium-driver (as tests/test_visualize_page.py does).
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

WIDTH, HEIGHT = 960, 1000


def main(page: str, out: str, fragment: str = "") -> None:
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                     f"--user-data-dir={profile}"):
            opts.add_argument(flag)
        drv = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=opts)
        try:  # the viewport itself is WIDTH x HEIGHT (a window size would include the browser's frame)
            drv.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
            drv.get(Path(page).resolve().as_uri() + fragment)
            png = drv.get_screenshot_as_png()
        finally:
            drv.quit()
    # a 256-colour palette, as the page has few colours: about a third of the bytes of RGB
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(out, optimize=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
