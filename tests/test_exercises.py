import numpy as np
import pytest
from exercise_solutions import SOLUTIONS

from chordlab import check
from chordlab.exercises import exercises


@pytest.mark.parametrize("name", exercises())
def test_model_answer_passes(name):
    result = check(name, SOLUTIONS[name])
    assert result.passed, str(result)
    assert str(result).startswith("PASS")


def test_stub_is_reported_not_raised():
    def stub(*args):
        raise NotImplementedError

    r = check("attention_2d", stub)
    assert not r.passed and "not implemented yet" in str(r)


def test_wrong_answers_get_a_hint():
    def no_max_subtraction(q, k, v):
        s = np.exp(q @ k.T / np.sqrt(q.shape[-1]))
        return (s / s.sum(1, keepdims=True)) @ v

    r = check("attention_2d", no_max_subtraction)
    assert not r.passed and "large scores" in str(r) and "row's max" in str(r)
    r = check("merge_states", lambda m1, l1, m2, l2: (max(m1, m2), l1 + l2))
    assert not r.passed and "Hint" in str(r)
    r = check("score_matrix_bytes", lambda B, H, L, s: B * H * L * s)
    assert not r.passed
    r = check("tile_update", lambda m, l, acc, S, V: 1 / 0)
    assert not r.passed and "ZeroDivisionError" in str(r)


def test_unknown_exercise():
    with pytest.raises(ValueError, match="unknown exercise"):
        check("nope", print)
