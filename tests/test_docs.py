"""The documentation site builds offline without a warning (`mkdocs build --strict`, what
`make docs` runs), its CLI reference is generated from the parser (a new flag changes it), its
API page renders the public signatures, and (slow) headless Chromium shows them."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "cli_reference.py"


def load_hook():
    spec = importlib.util.spec_from_file_location("cli_reference_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_site(out: Path) -> Path:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "WARNING" not in log, log[-4000:]
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build_site(tmp_path_factory.mktemp("docs") / "site")


def text_of(html_file: Path) -> str:
    html = html_file.read_text()
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&quot;", '"')


def test_the_site_builds_strict_with_every_page(site):
    for page in ("getting-started", "concepts", "python", "measured", "stability", "architecture"):
        assert (site / page / "index.html").is_file(), page
    for page in ("your-data", "clusters-and-launchers", "hub-models", "text-conditioning"):
        assert (site / "how-to" / page / "index.html").is_file(), page
    assert "0.2.0 (unreleased)" in text_of(site / "stability" / "index.html")  # CHANGELOG.md
    assert not (site / "hooks").exists()


def test_the_api_page_renders_every_public_function_with_its_signature(site):
    import hetdiff

    html = (site / "reference" / "api" / "index.html").read_text()
    signatures = [
        text_of_fragment(block)
        for block in re.findall(r'<div class="doc-signature highlight">(.*?)</div>', html, re.S)
    ]
    named = {sig.split("(")[0].strip() for sig in signatures}
    functions = [n for n in hetdiff.__all__ if callable(getattr(hetdiff, n)) and n[0].islower()]
    assert set(functions) <= named, set(functions) - named
    sample = next(sig for sig in signatures if sig.startswith("sample("))
    for parameter in ("strategy: str | None = None", 'solver: str = "heun"', "cfg: float = 1.0"):
        assert parameter in sample


def text_of_fragment(html: str) -> str:
    text = re.sub(r"<[^>]+>", "", html).replace("&quot;", '"').replace("&gt;", ">")
    return re.sub(r"\s+", " ", text).replace("( ", "(").replace(" )", ")").strip()


def test_the_cli_page_lists_every_flag_of_every_command(site):
    from hetdiff.cli import build_parser

    page = text_of(site / "reference" / "cli" / "index.html")
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    for name, sub in subparsers.choices.items():
        assert f"hetdiff {name}" in page
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in page, (name, flag)


def test_adding_a_flag_changes_the_generated_cli_reference():
    from hetdiff.cli import build_parser

    hook = load_hook()
    parser = build_parser()
    before = hook.cli_reference(parser)
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    subparsers.choices["sample"].add_argument(
        "--grid-gap", type=int, default=3, choices=(1, 3), help="pixels between images"
    )
    after = hook.cli_reference(parser)
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert "| `--grid-gap` `GRID_GAP` | `3` | `1`, `3` | pixels between images |" in added
    sample_section = after.split("## `hetdiff sample`")[1].split("## `hetdiff ")[0]
    assert "--grid-gap" in sample_section and "[--grid-gap {1,3}]" in sample_section
    page = "# CLI\n\n<!-- cli-reference -->\n"
    assert hook.on_page_markdown(page, page=None).count("## `hetdiff ") == len(subparsers.choices)


def screenshot(browser: str, page: Path, png: Path, profile: Path) -> np.ndarray:
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
         "--window-size=1280,1600", f"--screenshot={png}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    return np.asarray(Image.open(png).convert("L"), dtype=np.float32)


@pytest.mark.slow
def test_chromium_shows_the_rendered_signatures_of_the_api_page(site, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    page = site / "reference" / "api" / "index.html"
    bare = page.with_name("bare.html")  # the same page without its signature blocks
    bare.write_text(
        re.sub(r'<div class="doc-signature highlight">.*?</div>', "", page.read_text(), flags=re.S)
    )
    shot = screenshot(browser, page, tmp_path / "api.png", tmp_path / "profile")
    without = screenshot(browser, bare, tmp_path / "bare.png", tmp_path / "profile")
    assert shot.shape == without.shape == (1600, 1280)
    # text is dark on white: the signatures add dark pixels, and move what follows them
    assert (shot < 128).mean() > 0.01
    assert np.abs(shot - without).mean() > 2.0
    keep = os.environ.get("HETDIFF_SCREENSHOT_DIR")
    if keep:
        shutil.copy(tmp_path / "api.png", Path(keep) / "docs-api-page.png")
