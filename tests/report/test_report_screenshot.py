"""The report opens offline in headless Chromium and shows its sample grids (marked slow:
`make test-slow` runs it; it needs Debian's chromium)."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CONFIG = """
data = "digits"
resolution = 8
[cluster]
k = 2
fine = 8
features = "pixels"
[[experts]]
objective = "ddpm"
steps = 30
batch_size = 32
prediction = "eps"
schedule = "linear"
[[experts]]
objective = "flow"
steps = 30
batch_size = 32
[router]
steps = 20
batch_size = 32
[sample]
n = 16
steps = 4
strategies = ["top1", "full"]
[evaluate]
n = 16
fid = false
"""


def screenshot(browser: str, page, png, tmp_path):
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,900", f"--screenshot={png}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    return png


def dark_fraction(png) -> float:
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.shape == (900, 1200)
    return float((pixels[:450] < 60).mean())


def test_report_renders_sample_grids_in_chromium(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    config = tmp_path / "toy.toml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "hetdiff", "run", str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = out / "report.html"
    text_only = tmp_path / "text_only.html"
    text_only.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', report.read_text()))
    shot = screenshot(browser, report, tmp_path / "report.png", tmp_path)
    blank = screenshot(browser, text_only, tmp_path / "text_only.png", tmp_path)
    # digit grids are white strokes on black: the inlined PNGs, rendered, darken the top of the
    # page by far more than the text and tables alone do
    dark_with, dark_without = (dark_fraction(p) for p in (shot, blank))
    assert dark_with > dark_without + 0.03, (dark_with, dark_without)
    shutil.copy(shot, out / "report-screenshot.png")
