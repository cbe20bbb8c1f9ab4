"""Headless Chromium for the tests: render a page to PNG and collect its console messages.

Chromium (Debian package ``chromium``, installed by ``.ci/run``) runs with a fresh profile and
everything that would reach the network switched off; ``--enable-logging=stderr --v=0`` makes it
print each console message (errors, uncaught exceptions) as an ``INFO:CONSOLE`` line.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "headless Chromium is not installed (Debian package 'chromium'; .ci/run installs it)"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--hide-scrollbars",
]
CONSOLE = re.compile(r":CONSOLE[^\]]*\]\s*(.*)")


def render(page: Path, png: Path, profile: Path, width: int = 1200, height: int = 4000) -> list[str]:
    """Screenshot ``page`` into ``png``; returns the page's console messages."""
    profile.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}) on {page}: {done.stderr[-2000:]}")
    return [m.group(1) for m in map(CONSOLE.search, done.stderr.splitlines()) if m]


def ink(png: Path) -> tuple[float, float]:
    """(fraction of pixels that are not background white, gray-level standard deviation)."""
    gray = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return float((gray < 245).mean()), float(gray.std())
