"""Where a result came from: dpmed's version and git commit, the machine, the date, and the
command that started a sweep (`<out>/sweep.json`), for the report's provenance block.

>>> sorted(machine())
['cpu', 'cpu_cores', 'platform']
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

from dpmed import __version__

SWEEP_RECORD = "sweep.json"
_SOURCE = Path(__file__).resolve().parent


def git_commit() -> str | None:
    """The commit of the checkout dpmed runs from (with "+changes" if its files differ
    from it), or None where dpmed is not run from a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(_SOURCE), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_SOURCE), "status", "--porcelain", "--untracked-files=no", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if dirty else "") if head else None


def machine() -> dict[str, Any]:
    """The CPU model, its core count and the operating system."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
    }


def now() -> str:
    """The current time in UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def record_sweep(out: Path, *, name: str, description: str, argv: list[str]) -> None:
    """Append this invocation of a sweep (name, command, time, version, commit) to
    `<out>/sweep.json`; a resumed sweep keeps every invocation."""
    path = out / SWEEP_RECORD
    record = read_sweep(out) or {"sweep": name, "description": description, "invocations": []}
    record["invocations"].append(
        {
            "command": shlex.join(["dpmed", *argv]),
            "at": now(),
            "dpmed_version": __version__,
            "git_commit": git_commit(),
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def read_sweep(out: Path) -> dict[str, Any] | None:
    """`<out>/sweep.json`, or None for a sweep run before it was written."""
    path = out / SWEEP_RECORD
    return json.loads(path.read_text()) if path.exists() else None
