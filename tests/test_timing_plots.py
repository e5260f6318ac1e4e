"""The shared timing runner and the chapter plots (plain functions behind the figures)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from chordlab import plots
from chordlab.timing import pinned_threads, time_interleaved


def test_time_interleaved_runs_round_robin():
    calls = []
    t = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then interleaved rounds
    assert len(t["a"].seconds) == 3 and t["a"].median >= 0 and t["a"].best <= t["a"].median
    assert t["a"].gflops(1e9) > 0


def test_pinned_threads_limits_blas():
    from threadpoolctl import threadpool_info

    with pinned_threads(1):
        assert all(p["num_threads"] == 1 for p in threadpool_info())


@pytest.mark.parametrize("causal", [False, True])
def test_tile_kinds(causal):
    kinds = plots.tile_kinds(256, 256, 64, 32, causal)
    assert kinds.shape == (4, 8)
    if not causal:
        assert (kinds == 2).all()
    else:
        assert kinds[0, 7] == 0 and kinds[3, 0] == 2 and kinds[1, 2] == 1
        assert (kinds == 0).sum() == 12  # the strictly-upper tiles are skipped


def test_tile_kinds_match_the_tiled_kernel_skips():
    """Tiles drawn as skipped are exactly those whose keys no query of the block may see."""
    Lq, Lk, bq, bk = 50, 70, 16, 8
    kinds = plots.tile_kinds(Lq, Lk, bq, bk, True)
    keep = np.tril(np.ones((Lq, Lk), bool), k=Lk - Lq)
    for (i, j), kind in np.ndenumerate(kinds):
        block = keep[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
        assert kind == (0 if not block.any() else 2 if block.all() else 1)


def test_memory_table_and_plots():
    rows = plots.memory_table(["reference", "tiled"], [64, 128], heads=2, head_dim=8, measure_up_to=64)
    assert [r.seq_len for r in rows] == [64, 64, 128, 128]
    assert rows[0].measured is not None and rows[2].measured is None
    assert plots.plot_memory(rows).axes
    assert plots.plot_tiles(64, 64, 16, 16, causal=True, highlight=(1, 1)).axes
    errs = plots.chunk_errors(np.random.default_rng(0).standard_normal((2, 64)), [1, 4, 64])
    assert all(e < 1e-6 for _, e in errs)
    assert plots.plot_chunk_error(errs).axes


def test_stored_timings_name_their_machine_and_invite_a_rerun():
    from chordlab.sysinfo import cpu_identity
    from chordlab.timing import measured_here

    line = measured_here()
    assert cpu_identity().describe() in line and "rerun this cell" in line


def test_standing_times_the_kernel_against_installed_peers_and_sgemm(monkeypatch):
    import importlib.util

    from chordlab import peers
    from chordlab.plots import plot_standing

    st = peers.standing(seq_len=64, head_dim=16, heads=2, repeats=1)
    assert "chordlab simd" in st.gflops and st.sgemm["gflops"] > 0 and st.sgemm["n"] == 2048
    for name, module in peers.MODULES.items():
        if importlib.util.find_spec(module) is None:
            assert "pip install -e .[bench]" in st.missing[name]
        else:
            assert name in st.gflops or "differs from the reference" in st.missing[name]
    assert plot_standing(st).axes[0].get_xlabel() == "GFLOP/s"
