"""Screenshot a report.html in headless Chromium, to look at what the report shows a person.

    python benchmarks/screenshot_report.py runs/paper-quick/report.html --out report.png
    python benchmarks/screenshot_report.py runs/paper-quick/report.html --width 700  # narrow

Installs Debian's chromium package (`apt-get install -y chromium`, as root) when no
chromium is on the PATH. Chromium runs with a throw-away profile and without network
services, sync or updates; the page is self-contained, so nothing is fetched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def chromium(*, install: bool = True) -> str:
    """The chromium executable, installed from Debian's packages if missing."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not install:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    if os.geteuid() != 0:
        raise SystemExit("chromium is missing; install it as root: apt-get install -y chromium")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, env=env)
    return shutil.which("chromium") or sys.exit("apt-get installed no chromium executable")


def screenshot(
    page: Path, out: Path, *, width: int = 1200, height: int = 6000, install: bool = True
) -> Path:
    """Render `page` at width x height CSS pixels and save the PNG at `out`."""
    out = out.resolve()
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="dpmed-chromium-") as profile:
        subprocess.run(
            [
                chromium(install=install),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                f"--screenshot={out}",
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    if not out.exists():
        raise SystemExit(f"chromium wrote no screenshot at {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the report.html to render")
    parser.add_argument("--out", type=Path, help="PNG to write (default: beside the page)")
    parser.add_argument("--width", type=int, default=1200, help="window width (default 1200)")
    parser.add_argument("--height", type=int, default=6000, help="window height (default 6000)")
    args = parser.parse_args()
    out = args.out or args.page.with_suffix(f".{args.width}px.png")
    print(f"wrote {screenshot(args.page, out, width=args.width, height=args.height)}")


if __name__ == "__main__":
    main()
