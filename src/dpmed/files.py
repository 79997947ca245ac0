"""Reading the user's text files and checking where outputs go, every failure one line."""

from __future__ import annotations

import os
from pathlib import Path

from dpmed.errors import ConfigError, DpmedError


def read_text(path: Path, what: str, error: type[DpmedError] = ConfigError) -> str:
    """The UTF-8 text of `path` (a leading byte-order mark dropped); a file that cannot be
    read or is not UTF-8 (UTF-16, Latin-1, binary) raises `error`, naming it as `what`."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None


def check_output_folder(path: Path) -> None:
    """`path` can be a folder of outputs: it is one or can be made (no file in the way, the
    nearest existing folder writable). Checked before any work, so a bad --out wastes none."""
    for place in (path, *path.parents):
        if place.exists():
            break
    if not place.is_dir():
        raise ConfigError(f"--out {path}: {place} is a file, not a folder; choose another --out")
    if not os.access(place, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {path}: folder {place} is not writable; choose another --out")
