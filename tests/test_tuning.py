"""Block-size tuning: sweep, cache model, autotune and its cache file, block_q="auto", the CLI, the panel's
plain functions and the plots behind them."""

import json
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import chordlab
from chordlab import tuning, widgets
from chordlab.plots import plot_roofline, plot_speedup, plot_sweep_heatmap, speedup_table


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHORDLAB_TUNE_CACHE", str(tmp_path / "autotune.json"))
    return tmp_path / "autotune.json"


def test_sweep_table_for_every_tunable_backend_by_name():
    for name in widgets.tunable_backends():
        kw = {"kernel": "v2"} if name == "cuda-cpu" else {}
        table = tuning.sweep(name, (1, 2, 64, 16), [16, 32], [8, 16], repeats=1, progress=False, **kw)
        assert len(table.rows) == 4
        assert table.best.gflops > 0 and table.threads >= 1
        qs, ks, g = table.grid()
        assert qs == [16, 32] and ks == [8, 16] and np.isfinite(g).any()
        assert "block_q" in str(table)


def test_sweep_keeps_refused_pairs_with_the_reason():
    table = tuning.sweep("cuda-cpu", (1, 1, 32, 64), [8, 6], [32, 16], repeats=1, progress=False, kernel="v3")
    skipped = {(r.block_q, r.block_k): r.skipped for r in table.rows if r.skipped}
    assert "warp size" in skipped[(8, 16)] and "multiple of 4" in skipped[(6, 32)]
    assert table.best.block_q == 8 and table.best.block_k == 32


def test_sweep_rejects_backends_without_blocks():
    with pytest.raises(ValueError, match="takes no block sizes"):
        tuning.sweep("reference", (1, 1, 32, 8))


def test_cache_model(monkeypatch):
    c = tuning.cache_sizes()
    assert {"L1", "L2"} <= set(c.sizes) and c.sizes["L1"] < c.sizes["L2"]
    assert c.level(1024) == "L1" and c.level(10**12) == "RAM"
    assert tuning.working_set_bytes(64, 128, 64) == 4 * (2 * 64 * 64 + 2 * 128 * 64 + 64 * 128)
    monkeypatch.setattr(tuning.Path, "glob", lambda self, pattern: iter(()))
    monkeypatch.setattr(tuning.platform, "system", lambda: "Linux")
    assert tuning.cache_sizes().source.startswith("fallback")


def test_autotune_caches_and_reuses(private_cache):
    first = tuning.autotune("tiled", (1, 2, 64, 16), block_qs=[16, 32], block_ks=[16, 64], repeats=1, progress=False)
    assert not first.from_cache and (first.block_q, first.block_k) in {(16, 16), (16, 64), (32, 16), (32, 64)}
    data = json.loads(private_cache.read_text())
    (key, entry), = data["entries"].items()
    assert key.startswith("tiled|D16-L64-full-float32") and entry["cpu"] == chordlab.sysinfo.cpu_identity().key()
    again = tuning.autotune("tiled", (1, 2, 60, 16), repeats=1, progress=False)  # same shape class
    assert again.from_cache and (again.block_q, again.block_k) == (first.block_q, first.block_k)


def test_autotune_ignores_unreadable_and_foreign_caches(private_cache):
    private_cache.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable autotune cache"):
        r = tuning.autotune("tiled", (1, 1, 32, 8), block_qs=[16], block_ks=[16], repeats=1, progress=False)
    assert not r.from_cache and "unreadable" in r.note
    data = json.loads(private_cache.read_text())
    for entry in data["entries"].values():
        entry["cpu"] = "Some Other CPU 9000"
    private_cache.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="measured on 'Some Other CPU 9000'"):
        r = tuning.autotune("tiled", (1, 1, 32, 8), block_qs=[16], block_ks=[16], repeats=1, progress=False)
    assert not r.from_cache


def test_attention_block_auto(private_cache, rng):
    q = rng.standard_normal((1, 2, 40, 16)).astype(np.float32)
    want = chordlab.attention(q, q, q, backend="reference")
    got = chordlab.attention(q, q, q, backend="tiled", block_q="auto", block_k="auto")
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    assert private_cache.exists()
    with pytest.raises(ValueError, match="takes no block sizes"):
        chordlab.attention(q, q, q, backend="reference", block_q="auto")
    with pytest.raises(TypeError, match="block_q must be a positive int, 'auto' or None"):
        chordlab.attention(q, q, q, backend="tiled", block_q="fast")


def test_tune_cli(private_cache):
    r = subprocess.run([sys.executable, "-m", "chordlab", "tune", "--backend", "tiled", "--seq-len", "64",
                        "--head-dim", "16", "--heads", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "best for tiled: block_q=" in r.stdout and str(private_cache) in r.stdout
    r = subprocess.run([sys.executable, "-m", "chordlab", "tune", "--backend", "reference"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "takes no block sizes" in r.stderr


def test_demo_report():
    from chordlab.demo import seed_demo

    rep = seed_demo(seq_len=128, heads=2, head_dim=16, repeats=1)
    names = [r.name for r in rep.rows]
    assert names[:2] == ["standard", "flash (NumPy tiled)"]
    assert rep.max_abs_diff < 1e-5 and rep.speedup("standard") == 1.0
    assert "Seed demo re-measured" in str(rep)
    std = rep.rows[0]
    assert std.measured_bytes > 0 and abs(std.measured_bytes - std.predicted_bytes) < 0.25 * std.predicted_bytes


def test_panel_functions():
    s = widgets.PanelState(backend="tiled", block_q=32, block_k=16, seq_len=128, head_dim=32, heads=2)
    res = widgets.measure_config(s, repeats=1)
    assert res.error is None and res.gflops > 0 and res.predicted_bytes > 0 and res.cache_level in ("L1", "L2")
    assert "block_q=32 block_k=16" in res.summary()
    bad = widgets.measure_config(widgets.PanelState(backend="cuda-cpu", block_q=16, block_k=16, seq_len=64,
                                                    head_dim=32, heads=1), repeats=1)
    if chordlab.get_backend("cuda-cpu").available():  # its default kernel, v3, refuses block_k=16: said, not raised
        assert "warp size" in bad.error and bad.gflops is None and "warp size" in bad.summary()
    table = widgets.run_panel_sweep(s, blocks=(16, 32), repeats=1)
    assert widgets.sweep_matches(table, s) and not widgets.sweep_matches(table, widgets.PanelState())
    fig = widgets.render(s, res, table)
    assert len(fig.axes) >= 3  # heatmap, its colour bar, the cache bar
    assert len(widgets.render(s, res, None).axes) == 2


def test_panel_widget_updates_when_a_slider_moves():
    panel = widgets.TuningPanel(widgets.PanelState(backend="tiled", block_q=32, block_k=32, seq_len=128,
                                                   head_dim=32, heads=1))
    before = panel.label.value
    panel.block_k.value = 64
    assert panel.state.block_k == 64 and panel.label.value != before and "block_k=64" in panel.label.value
    panel._on_sweep(None)
    assert panel.table is not None and widgets.sweep_matches(panel.table, panel.state)


def test_speedup_roofline_and_heatmap():
    rows = speedup_table(["tiled"], [64, 128], heads=1, head_dim=16, repeats=1, include_torch=False)
    assert {r.name for r in rows} == {"reference", "tiled"}
    assert all(r.vs_reference > 0 for r in rows) and [r.vs_reference for r in rows if r.name == "reference"] == [1, 1]
    assert plot_speedup(rows).axes
    assert plot_roofline({"a": 10.0, "b": 20.0}, 40.0).axes
    table = tuning.sweep("tiled", (1, 1, 64, 8), [16, 32], [16, 32], repeats=1, progress=False)
    assert plot_sweep_heatmap(table, highlight=(16, 32)).axes
