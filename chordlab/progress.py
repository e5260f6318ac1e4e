"""Exercise progress, kept on the student's machine: `check` records each exercise passed.

``python -m chordlab progress`` shows it; ``python -m chordlab progress --export FILE`` writes a JSON file a
teacher can collect (exercise, first and last pass, and the machine it ran on). The file is
``~/.local/share/chordlab/progress.json``, or ``$CHORDLAB_PROGRESS`` when set. Recording never fails a check:
a file that cannot be written is skipped.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import time
from pathlib import Path


def progress_file() -> Path:
    return Path(os.environ.get("CHORDLAB_PROGRESS") or Path.home() / ".local" / "share" / "chordlab" / "progress.json")


def load() -> dict:
    """``{"passed": {exercise: {"first": iso time, "last": iso time, "count": n}}}`` (empty when unreadable)."""
    try:
        data = json.loads(progress_file().read_text())
    except (OSError, ValueError):
        return {"passed": {}}
    return data if isinstance(data.get("passed"), dict) else {"passed": {}}


def record_pass(exercise: str) -> None:
    data = load()
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    entry = data["passed"].setdefault(exercise, {"first": now, "count": 0})
    entry["last"], entry["count"] = now, entry.get("count", 0) + 1
    path = progress_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)
    except OSError:
        pass


def report() -> str:
    """One line per exercise of the course: passed (when) or not yet."""
    from .exercises import exercises

    passed = load()["passed"]
    lines = [f"{len([e for e in exercises() if e in passed])} of {len(exercises())} exercises passed "
             f"({progress_file()})"]
    for name in exercises():
        entry = passed.get(name)
        when = f"first passed {entry['first']}" if entry else ""
        lines.append(f"  {'PASS' if entry else '    '}  {name:<20} {when}")
    return "\n".join(lines)


def export(path) -> Path:
    """Write the progress, with who and where, to ``path`` for the teacher; returns the path."""
    from .exercises import exercises
    from .sysinfo import cpu_identity

    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    data = {"user": user, "host": platform.node(), "cpu": cpu_identity().describe(),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S"), "exercises": exercises(), **load()}
    out = Path(path)
    out.write_text(json.dumps(data, indent=1))
    return out
