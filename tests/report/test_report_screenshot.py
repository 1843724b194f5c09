"""The report opens offline in headless Chromium and shows its sample grids (marked slow:
`make test-slow` runs it; it needs Debian's chromium)."""

import html
import json
import os
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


CLASS_CONFIG = CONFIG.replace("n = 16\nsteps = 4", "n = 40\nsteps = 4").replace(
    "[evaluate]\nn = 16\nfid = false",
    "[evaluate]\nn = 40\nfid = false\njudge_steps = 150\njudge_reference_n = 200\nbootstrap = 50",
)


def dump_dom(browser: str, page, tmp_path) -> str:
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def test_report_shows_class_rows_and_the_verdict_in_chromium(tmp_path):
    """A class-conditional run with judge metrics: the printed verdict line is the report's, the
    rendered DOM has one labelled row per digit class for each strategy, and the screenshot of
    the grids is a non-blank PNG (the inlined rows darken the page beyond its text alone)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    assert "judge_steps = 150" in CLASS_CONFIG and "n = 40\nsteps = 4" in CLASS_CONFIG
    config = tmp_path / "toy.toml"
    config.write_text(CLASS_CONFIG)
    out = tmp_path / "run"
    env = {**os.environ, "HETDIFF_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "hetdiff", "run", str(config), "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (verdict,) = [line for line in done.stdout.splitlines() if line.startswith("verdict: ")]
    assert "the top-1 ensemble's FD_judge" in verdict and "full ensemble's" in verdict
    metrics = json.loads((out / "metrics.json").read_text())
    for name, entry in metrics["experts"].items():  # alone, asked for the ensemble's classes
        assert "fd_judge" in entry and 0 <= entry["class_accuracy"] <= 1, name

    report = out / "report.html"
    dom = dump_dom(browser, report, tmp_path)
    assert f'<p class="verdict" id="verdict">{html.escape(verdict, quote=False)}</p>' in dom
    words = "zero one two three four five six seven eight nine".split()
    names = [f"digits/{word}" for word in words]
    for strategy in ("top1", "full"):
        figure = dom[dom.index(f'<figure class="classes" data-strategy="{strategy}">') :]
        figure = figure[: figure.index("</figure>")]
        labels = re.findall(r'<th scope="row" class="cls">(.*?) <span class="count">', figure)
        assert labels == names, labels
        images = re.findall(r'<img class="row" width="(\d+)"[^>]* src="data:image/png', figure)
        counts = [int(c) for c in re.findall(r'<span class="count">\((\d+)\)</span>', figure)]
        assert len(images) == sum(c > 0 for c in counts) and sum(counts) == 40
    assert '<table class="judged">' in dom and "expert 1 alone" in dom

    text_only = tmp_path / "text_only.html"
    text_only.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', report.read_text()))
    shots = []
    for page, name in ((report, "grids.png"), (text_only, "text_only.png")):
        png = tmp_path / name
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1200,1400", f"--screenshot={png}", page.as_uri()],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        shots.append(np.asarray(Image.open(png).convert("L"), dtype=np.float32))
    grids, text = shots
    assert grids.shape == (1400, 1200) and 20_000 < (tmp_path / "grids.png").stat().st_size
    assert grids.std() > 20  # not blank: dark digit cells on a white page
    assert (grids < 60).mean() > (text < 60).mean() + 0.03, (
        (grids < 60).mean(),
        (text < 60).mean(),
    )
    shutil.copy(tmp_path / "grids.png", out / "report-class-grids.png")
