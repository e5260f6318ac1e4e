"""Regenerate the README's plot (`make docs-images`): predicted and measured memory of one attention call
against sequence length for every available CPU backend, measured on this machine now."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import chordlab  # noqa: E402
from chordlab.plots import memory_table, plot_memory  # noqa: E402

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
out.mkdir(parents=True, exist_ok=True)
names = ["reference", "tiled"] + [b.name for b in chordlab.backends() if b.available and b.name == "simd"]
rows = memory_table(names, [256, 512, 1024, 2048, 4096, 8192, 16384], measure_up_to=2048)
fig = plot_memory(rows, f"memory of one call, 8 heads, head dim 64 ({chordlab.sysinfo.cpu_identity().describe()})")
fig.savefig(out / "memory.png", dpi=110)
print("wrote", out / "memory.png")
