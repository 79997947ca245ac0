"""diffprivlib's mechanisms as an independent reference (tests and benchmarks only).

diffprivlib 0.6.6's top-level `__init__` imports its scikit-learn models, which fail on
scikit-learn >= 1.8 (`sklearn.tree._tree.DOUBLE` is gone). The mechanisms themselves need
only numpy and `diffprivlib.utils`, so `diffprivlib_mechanisms` imports them under an
empty stand-in for the top-level package when the real one cannot be imported.
diffprivlib is a dev dependency (`pip install -e '.[dev]'`), never a runtime one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def diffprivlib_mechanisms() -> types.ModuleType | None:
    """`diffprivlib.mechanisms`, or None when diffprivlib is not installed."""
    if "diffprivlib.mechanisms" in sys.modules:
        return sys.modules["diffprivlib.mechanisms"]
    spec = importlib.util.find_spec("diffprivlib")
    if spec is None:
        return None
    try:
        return importlib.import_module("diffprivlib.mechanisms")
    except ImportError:
        sys.modules.pop("diffprivlib", None)
    package = types.ModuleType("diffprivlib")
    package.__path__ = list(spec.submodule_search_locations or [])
    sys.modules["diffprivlib"] = package
    return importlib.import_module("diffprivlib.mechanisms")
