"""Where data and caches live: --data-root, else $DPMED_DATA, else a per-user cache dir."""

from __future__ import annotations

import os
from pathlib import Path

from dpmed.errors import DataError


def cache_dir() -> Path:
    """dpmed's per-user cache: $DPMED_CACHE, else $XDG_CACHE_HOME/dpmed, else ~/.cache/dpmed."""
    if os.environ.get("DPMED_CACHE"):
        return Path(os.environ["DPMED_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dpmed"


def resolve_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data root in order of precedence: the argument, $DPMED_DATA, the cache's data/.

    A root the user named must exist; the default one is created when data is downloaded.
    """
    for named, how in ((explicit, "--data-root"), (os.environ.get("DPMED_DATA"), "DPMED_DATA")):
        if named:
            root = Path(named).expanduser().resolve()
            if not root.is_dir():
                raise DataError(
                    f"data root {root} (from {how}) does not exist; "
                    "point --data-root or DPMED_DATA at the folder that holds the data"
                )
            return root
    return cache_dir() / "data"
