"""What a chapter does when a backend it teaches is not available here: say why, point to stored results,
and carry on (a run-all never stops halfway).

``if needs("simd"): ...`` runs the block when the backend is available; otherwise it prints the reason, the
fix, and where the results measured on other machines are stored, and returns False. The tests run every
chapter with ``CHORDLAB_DISABLE=optional`` (see `backends.disabled_by_env`), as on a laptop without them.
"""

from __future__ import annotations

from pathlib import Path

from .backends import get_backend

DOCS = Path(__file__).resolve().parent.parent / "docs"
_told: set[str] = set()


def stored_cpu_runs() -> list[Path]:
    """The stored CPU benchmark tables, one per machine (docs/benchmarks/<machine>/)."""
    return sorted(p for p in (DOCS / "benchmarks").glob("*/*.md"))


def stored_table(path: Path, heading: str = "head dim 64, not causal, 1 thread") -> str:
    """The machine line and one table of a stored benchmark file (empty when it has no such table)."""
    lines = path.read_text().splitlines()
    machine = next((line.split(";")[0] + ")" for line in lines if line.startswith("Machine:")), path.parent.name)
    for i, line in enumerate(lines):
        if line.startswith("## ") and heading in line:
            table = [x for x in lines[i + 1:] if x.startswith("|")][:7]
            return "\n".join([machine, line, *table])
    return ""


def needs(backend: str, show: str | None = "cpu") -> bool:
    """True when ``backend`` runs here. Otherwise prints why (once per backend), the stored results
    (``show="cpu"``: the CPU tables in docs/benchmarks; ``"gpu"``: docs/gpu-results.md), and returns False."""
    a = get_backend(backend).available()
    if a:
        return True
    if backend in _told:
        print(f"(skipped: backend {backend!r} is unavailable here)")
        return False
    _told.add(backend)
    print(f"Skipped: backend {backend!r} is unavailable here: {a.reason}")
    if show == "cpu":
        runs = stored_cpu_runs()
        if runs:
            print("What this part measures, as stored from other machines (docs/benchmarks/):\n")
            for path in runs:
                table = stored_table(path)
                if table:
                    print(table, "\n")
    elif show == "gpu":
        gpu = DOCS / "gpu-results.md"
        print(f"Stored GPU results: {gpu}" if gpu.exists() else "No GPU results are stored yet (docs/gpu-results.md).")
    return False
