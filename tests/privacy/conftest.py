"""Independent references for the privacy tests: diffprivlib's mechanisms."""

from __future__ import annotations

import types

import diffprivlib.mechanisms
import pytest


@pytest.fixture(scope="session")
def diffprivlib_mechanisms() -> types.ModuleType:
    return diffprivlib.mechanisms
