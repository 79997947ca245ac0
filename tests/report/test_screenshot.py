"""benchmarks/screenshot_report.py renders a report in headless Chromium (skipped where
Debian's chromium is not installed: `apt-get install -y chromium`, or run the script as
root, which installs it)."""

import importlib.util
import shutil

import numpy as np
import pytest
from PIL import Image

from dpmed.report.build import build_report
from tests.conftest import REPO
from tests.report.test_build import _fake_database, _fake_run

needs_chromium = pytest.mark.skipif(
    not shutil.which("chromium"), reason="chromium not installed (apt-get install -y chromium)"
)


def _script():
    spec = importlib.util.spec_from_file_location(
        "screenshot_report", REPO / "benchmarks" / "screenshot_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_chromium
def test_a_report_screenshots_in_headless_chromium(tmp_path):
    privacy = {"mechanism": "laplace", "unit": "image", "epsilon": 784.0, "delta": 0.0}
    privacy |= {"epsilon_per_pixel": 1.0, "epsilon_per_image": 784.0}
    out = tmp_path / "sweep"
    _fake_database(out, [_fake_run("laplace", 0, privacy), _fake_run("laplace", 1, privacy)])
    build_report(out)
    png = _script().screenshot(out / "report.html", tmp_path / "r.png", width=800, height=1500)
    pixels = np.asarray(Image.open(png).convert("L"))
    assert pixels.shape == (1500, 800)
    assert (pixels < 128).mean() > 0.005  # text and figures drawn, not a blank page
