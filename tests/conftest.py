import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# CI: derandomized (a failing example reproduces on every run); locally: random exploration.
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Tolerances for comparing a kernel against the float64 reference, per input dtype.
TOL = {np.dtype(np.float32): dict(rtol=2e-5, atol=2e-5), np.dtype(np.float64): dict(rtol=1e-10, atol=1e-12)}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def private_progress(tmp_path, monkeypatch):
    """Exercise passes go to a file of the test's own, never to the user's progress."""
    path = tmp_path / "progress.json"
    monkeypatch.setenv("CHORDLAB_PROGRESS", str(path))
    return path
