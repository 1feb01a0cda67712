"""Open an HTML file in headless Chromium: a screenshot and the rendered DOM.

Tests that need it skip when Chromium is missing, unless PVSQUANT_REQUIRE_BROWSER is set
(.ci/run sets it and installs Debian's ``chromium``), in which case they fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "Chromium not found (Debian: apt-get install chromium)"
    if os.environ.get("PVSQUANT_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    base = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--allow-file-access-from-files"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120, check=True)


def screenshot(html: Path, png: Path, width: int = 1200, height: int = 2400) -> np.ndarray:
    """Render ``html`` and return the screenshot as an (H, W, C) float array in [0, 1]."""
    import matplotlib.image

    _run([f"--screenshot={png}", f"--window-size={width},{height}", html.resolve().as_uri()], png.parent)
    return matplotlib.image.imread(str(png))


def rendered_dom(html: Path, tmp: Path) -> str:
    """The DOM after Chromium has parsed and laid out the page."""
    return _run(["--dump-dom", html.resolve().as_uri()], tmp).stdout


def not_blank(image: np.ndarray) -> float:
    """Fraction of pixels that differ from the page background (the most common colour)."""
    rgb = (image[..., :3] * 255).round().astype(int)
    flat = rgb.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return float(np.mean(np.any(np.abs(flat - background) > 10, axis=1)))
