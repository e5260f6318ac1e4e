"""The tuning panel (ipywidgets), thin over plain functions that the tests call directly.

    panel = TuningPanel()      # in a notebook: sliders for block_q, block_k, seq len, head dim; a backend
    panel                      # dropdown, a causal toggle and a "run sweep" button

The work is done by `measure_config` (time and memory of one configuration), `run_panel_sweep` (the
heatmap's data) and `render` (the figure: the sweep heatmap with the chosen cell, and the cache-model bar).
The widget only reads its controls into a `PanelState` and calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .api import attention
from .backends import backends
from .memory import format_bytes, predict_memory
from .timing import pinned_threads, time_interleaved
from .tuning import SweepTable, cache_sizes, sweep, working_set_bytes
from .validation import ProblemShape

BLOCK_CHOICES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class PanelState:
    backend: str = "tiled"
    block_q: int = 64
    block_k: int = 64
    seq_len: int = 512
    head_dim: int = 64
    heads: int = 4
    causal: bool = False

    @property
    def shape(self) -> ProblemShape:
        return ProblemShape(1, self.heads, self.heads, self.seq_len, self.seq_len, self.head_dim)


@dataclass(frozen=True)
class ConfigResult:
    state: PanelState
    median_s: float | None
    gflops: float | None
    predicted_bytes: int | None
    working_set: int
    cache_level: str
    error: str | None = None

    def summary(self) -> str:
        s = self.state
        head = f"{s.backend} block_q={s.block_q} block_k={s.block_k} (L={s.seq_len}, D={s.head_dim})"
        if self.error:
            return f"{head}: {self.error}"
        return (f"{head}: {self.median_s * 1e3:.2f} ms, {self.gflops:.1f} GFLOP/s, memory "
                f"{format_bytes(self.predicted_bytes)}, tiles {format_bytes(self.working_set)} ({self.cache_level})")


def tunable_backends() -> list[str]:
    """Backends the panel can drive: available here and taking block sizes (from the registry)."""
    return [b.name for b in backends() if b.available and b.takes_block_sizes]


def measure_config(state: PanelState, repeats: int = 3, seed: int = 0) -> ConfigResult:
    """Time one configuration on random float32 inputs; errors (e.g. a tile a backend refuses) are reported."""
    caches = cache_sizes()
    ws = working_set_bytes(state.block_q, state.block_k, state.head_dim)
    s = state.shape
    r = np.random.default_rng(seed)
    q, k, v = (r.standard_normal((1, s.heads_q, s.len_q, s.head_dim)).astype(np.float32) for _ in range(3))
    try:
        kw = dict(causal=state.causal, backend=state.backend, block_q=state.block_q, block_k=state.block_k)
        pred = predict_memory(state.backend, q.shape, k.shape, causal=state.causal, block_q=state.block_q,
                              block_k=state.block_k).total
        with pinned_threads(1):
            t = time_interleaved({"c": lambda: attention(q, k, v, **kw)}, repeats=repeats)["c"]
    except (ValueError, TypeError, RuntimeError, MemoryError) as exc:
        return ConfigResult(state, None, None, None, ws, caches.level(ws), str(exc).split(";")[0])
    return ConfigResult(state, t.median, t.gflops(s.flops(state.causal)), pred, ws, caches.level(ws))


def run_panel_sweep(state: PanelState, blocks=BLOCK_CHOICES, repeats: int = 2) -> SweepTable:
    """The heatmap's data: every (block_q, block_k) of ``blocks`` for the state's backend and shape."""
    usable = [b for b in blocks if b <= max(state.seq_len, blocks[0])]
    return sweep(state.backend, state.shape, usable, usable, causal=state.causal, repeats=repeats, threads=1)


def sweep_matches(table: SweepTable | None, state: PanelState) -> bool:
    """Whether a sweep was made for this state's backend, shape and causal flag (block sizes aside)."""
    return (table is not None and table.backend == state.backend and table.shape == state.shape
            and table.causal == state.causal)


def render(state: PanelState, result: ConfigResult, table: SweepTable | None):
    """The panel's figure: heatmap with the chosen cell (or a prompt to run the sweep) over the cache bar."""
    import matplotlib.pyplot as plt

    from .plots import plot_cache_bar, plot_sweep_heatmap

    fig = plt.figure(figsize=(7, 6.2))
    top = fig.add_axes([0.1, 0.36, 0.85, 0.58])
    bottom = fig.add_axes([0.1, 0.1, 0.85, 0.12])
    if sweep_matches(table, state):
        plot_sweep_heatmap(table, highlight=(state.block_q, state.block_k), ax=top)
    else:
        top.text(0.5, 0.5, "press 'run sweep' for the heatmap\nof every block size", ha="center", va="center")
        top.set_axis_off()
    plot_cache_bar(result.working_set, cache_sizes(), ax=bottom)
    return fig


class TuningPanel:
    """Sliders and buttons over `measure_config`, `run_panel_sweep` and `render` (see the module docstring)."""

    def __init__(self, state: PanelState | None = None):
        import ipywidgets as w

        names = tunable_backends()
        state = state or PanelState(backend="simd" if "simd" in names else "tiled")
        self.state, self.table = state, None
        opts = dict(continuous_update=False, style={"description_width": "80px"})
        self.block_q = w.SelectionSlider(options=BLOCK_CHOICES, value=state.block_q, description="block_q", **opts)
        self.block_k = w.SelectionSlider(options=BLOCK_CHOICES, value=state.block_k, description="block_k", **opts)
        self.seq_len = w.SelectionSlider(options=(128, 256, 512, 1024, 2048), value=state.seq_len,
                                         description="seq len", **opts)
        self.head_dim = w.SelectionSlider(options=(32, 64, 80, 128), value=state.head_dim, description="head dim",
                                          **opts)
        self.backend = w.Dropdown(options=names, value=state.backend, description="backend")
        self.causal = w.Checkbox(value=state.causal, description="causal")
        self.button = w.Button(description="run sweep", button_style="primary")
        self.label = w.HTML()
        self.output = w.Output()
        for control in (self.block_q, self.block_k, self.seq_len, self.head_dim, self.backend, self.causal):
            control.observe(self._on_change, names="value")
        self.button.on_click(self._on_sweep)
        self.widget = w.VBox([w.HBox([w.VBox([self.backend, self.causal, self.button]),
                                      w.VBox([self.block_q, self.block_k, self.seq_len, self.head_dim])]),
                              self.label, self.output])
        self.refresh()

    def read_state(self) -> PanelState:
        return replace(self.state, backend=self.backend.value, block_q=self.block_q.value,
                       block_k=self.block_k.value, seq_len=self.seq_len.value, head_dim=self.head_dim.value,
                       causal=self.causal.value)

    def refresh(self) -> ConfigResult:
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.state = self.read_state()
        result = measure_config(self.state)
        self.label.value = f"<b>{result.summary()}</b>"
        fig = render(self.state, result, self.table)
        self.output.clear_output(wait=True)
        with self.output:
            display(fig)
        plt.close(fig)
        return result

    def _on_change(self, _change):
        self.refresh()

    def _on_sweep(self, _button):
        self.label.value = "<i>sweeping ...</i>"
        self.table = run_panel_sweep(self.read_state())
        self.refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
