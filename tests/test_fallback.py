"""Chapters on a machine without the optional backends: the CHORDLAB_DISABLE switch and `needs`.
(`make nbval-fallback` runs every chapter that way.)"""

import numpy as np
import pytest

import chordlab
from chordlab import fallback
from chordlab.backends import Availability


def test_disable_switch_turns_backends_off_everywhere(monkeypatch):
    monkeypatch.setenv("CHORDLAB_DISABLE", "optional")
    rows = {r.name: r for r in chordlab.backends()}
    assert rows["reference"].available and rows["tiled"].available
    for name in ("simd", "cuda", "cuda-cpu", "webgpu"):
        assert not rows[name].available and "CHORDLAB_DISABLE" in rows[name].reason
    q = np.ones((1, 1, 8, 8), np.float32)
    assert chordlab.choose_backend(chordlab.prepare(q, q, q)).name == "tiled"
    with pytest.raises(RuntimeError, match="unavailable: turned off by CHORDLAB_DISABLE"):
        chordlab.attention(q, q, q, backend="simd")
    monkeypatch.setenv("CHORDLAB_DISABLE", "webgpu, tiled")
    assert not chordlab.get_backend("tiled").available() and not chordlab.get_backend("webgpu").available()
    assert chordlab.get_backend("reference").available()


def test_a_user_backend_honours_the_switch_too(monkeypatch):
    class Mine(chordlab.Backend):
        name = "mine-test"

        def available(self):  # its own rule says yes; the switch must still win
            return Availability(True)

        def forward(self, problem, block_q, block_k, **options):
            raise AssertionError

        def extra_bytes(self, shape, itemsize, **kw):
            return 0

    monkeypatch.setenv("CHORDLAB_DISABLE", "mine-test")
    assert not Mine().available()


def test_needs_says_why_and_shows_stored_results(monkeypatch, capsys):
    monkeypatch.setenv("CHORDLAB_DISABLE", "simd")
    fallback._told.discard("simd")
    assert fallback.needs("simd") is False
    text = capsys.readouterr().out
    assert "Skipped: backend 'simd' is unavailable here: turned off by CHORDLAB_DISABLE" in text
    assert "stored from other machines" in text and "| N | simd-avx512" in text and "family 26" in text
    assert fallback.needs("simd") is False and "(skipped" in capsys.readouterr().out
    monkeypatch.delenv("CHORDLAB_DISABLE")
    assert fallback.needs("tiled") is True
