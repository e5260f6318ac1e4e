"""Chapter 9's payoff: a small attention model trained with chordlab's backward pass."""

import numpy as np

from chordlab import training


def test_the_whole_model_s_gradients_match_finite_differences():
    for seed in range(3):
        assert training.gradient_check(seed=seed) < 1e-4  # central differences, eps 1e-5, float64


def test_training_learns_to_reverse_and_needs_attention_to():
    _, history = training.train(150, seed=0)
    assert history[0]["accuracy"] < 0.3 and history[-1]["accuracy"] > 0.95
    assert history[-1]["loss"] < 0.1 * history[0]["loss"]
    _, without = training.train(150, seed=0, use_attention=False)
    assert without[-1]["accuracy"] < 0.4  # without attention a position cannot see the one it needs


def test_adam_moves_against_the_gradient():
    params = {"w": np.array([1.0, -2.0])}
    opt = training.Adam(lr=0.1)
    opt.step(params, {"w": np.array([3.0, -1.0])})
    np.testing.assert_allclose(params["w"], [0.9, -1.9])


def test_reversal_batches_are_reversed_and_seeded():
    a = training.reversal_batch(np.random.default_rng(0), 4, 6, 9)
    b = training.reversal_batch(np.random.default_rng(0), 4, 6, 9)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], a[0][:, ::-1])
