"""Independent references for the privacy tests: diffprivlib's mechanisms."""

from __future__ import annotations

import types

import pytest

from dpmed.privacy.reference import diffprivlib_mechanisms as _load


@pytest.fixture(scope="session")
def diffprivlib_mechanisms() -> types.ModuleType:
    mechanisms = _load()
    if mechanisms is None:
        pytest.skip("diffprivlib is not installed (pip install -e '.[dev]')")
    return mechanisms
