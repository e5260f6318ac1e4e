import numpy as np
import pytest

from chordlab import check
from chordlab.exercises import exercises
from chordlab.solutions import SOLUTIONS


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

    from chordlab import exercises as ex

    ex._misses.pop("attention_2d", None)
    r = check("attention_2d", no_max_subtraction)
    assert not r.passed and "large scores" in str(r) and "what can you subtract" in str(r)
    r = check("attention_2d", no_max_subtraction)  # the second miss gets the formula
    assert "row's max" in str(r)
    r = check("merge_states", lambda m1, l1, m2, l2: (max(m1, m2), l1 + l2))
    assert not r.passed and ("Hint" in str(r) or "Nudge" in str(r))
    r = check("score_matrix_bytes", lambda B, H, L, s: B * H * L * s)
    assert not r.passed
    r = check("tile_update", lambda m, l, acc, S, V: 1 / 0)
    assert not r.passed and "ZeroDivisionError" in str(r)


def test_unknown_exercise():
    with pytest.raises(ValueError, match="unknown exercise"):
        check("nope", print)


def test_feedback_is_graduated_nudge_first_then_the_hint_then_the_way_to_the_solution():
    from chordlab import exercises as ex

    ex._misses.pop("tile_update", None)
    wrong = lambda m, l, acc, S, V: (np.maximum(m, S.max(axis=1)), l + np.exp(S).sum(1), acc + np.exp(S) @ V)  # noqa: E731
    first, second, third = (str(check("tile_update", wrong)) for _ in range(3))
    assert "Nudge:" in first and "alpha" not in first
    assert "Hint:" in second and "alpha = exp(m - m_new)" in second
    assert "chordlab.solution('tile_update')" in third and "solution" not in second


def test_scalars_show_got_expected_and_the_ratio():
    r = check("score_matrix_bytes", lambda B, H, L, s: B * H * L * L)  # forgot the itemsize
    assert "got 2.09715e+06, expected 8.38861e+06 (off by 1/4x)" in str(r)
    r = check("working_set", lambda bq, bk, D: 8 * (bq * D + 2 * bk * D + bq * bk + bq * D))
    assert "(off by 2x)" in str(r)


def test_a_list_counts_as_a_tuple_and_a_wrong_count_says_how_to_return():
    r = check("merge_states", lambda m1, l1, m2, l2: list(SOLUTIONS["merge_states"](m1, l1, m2, l2)))
    assert r.passed, str(r)
    r = check("merge_states", lambda m1, l1, m2, l2: [m1])
    assert "returned 1 value(s) (a list), expected 2" in str(r) and "return x1, x2" in str(r)


def test_a_stub_that_returns_zero_is_not_implemented_yet():
    r = check("c_dot", lambda a, b: 0.0)
    assert not r.passed and "not implemented yet" in str(r) and "tail" not in str(r)
    r = check("tile_update", lambda m, l, acc, S, V: None)
    assert "not implemented yet" in str(r)


def test_merge_of_two_empty_states_must_stay_empty():
    def nan_when_empty(m1, l1, m2, l2):
        m = max(m1, m2)
        return m, l1 * np.exp(m1 - m) + l2 * np.exp(m2 - m)

    r = check("merge_states", nan_when_empty)
    assert not r.passed and "both chunks all masked" in str(r) and "NaN" in str(r)


def test_tiled_forward_must_skip_the_tiles_causal_hides():
    def no_skipping(q, k, v, block_q, block_k, causal):
        Lq, Lk = q.shape[0], k.shape[0]
        out, lse = np.zeros((Lq, q.shape[1])), np.full(Lq, -np.inf)
        for i0 in range(0, Lq, block_q):
            rows = slice(i0, min(i0 + block_q, Lq))
            S = np.concatenate([q[rows] @ k[j0:j0 + block_k].T for j0 in range(0, Lk, block_k)], axis=1)
            S = S / np.sqrt(q.shape[1])
            if causal:
                S = np.where(np.arange(Lk)[None] <= np.arange(i0, rows.stop)[:, None] + Lk - Lq, S, -np.inf)
            m = S.max(axis=1)
            ok = np.isfinite(m)
            P = np.exp(S[ok] - m[ok, None])
            out[rows][ok] = P @ v / P.sum(1, keepdims=True)
            lse[rows][ok] = m[ok] + np.log(P.sum(1))
        return out, lse

    r = check("tiled_forward", no_skipping)
    assert not r.passed and "skip the key tiles that causal hides" in str(r)
    assert "not causal, tiles that do not divide L: ok" in str(r)


def test_solutions_are_revealed_on_demand():
    import chordlab

    s = chordlab.solution("tile_update")
    assert "def tile_update" in repr(s) and s.fn is SOLUTIONS["tile_update"]
    assert "acc[r][c] = vfma" in repr(chordlab.solution("simd_scores_block"))
    with pytest.raises(ValueError, match="no model answer"):
        chordlab.solution("nope")


def test_progress_records_passes_and_exports(private_progress, tmp_path):
    import json
    import subprocess
    import sys

    from chordlab import progress

    assert check("score_matrix_bytes", SOLUTIONS["score_matrix_bytes"]).passed
    assert "score_matrix_bytes" in progress.load()["passed"]
    out = tmp_path / "class" / "alice.json"
    out.parent.mkdir()
    r = subprocess.run([sys.executable, "-m", "chordlab", "progress", "--export", str(out)], capture_output=True,
                       text=True, check=True)
    assert "1 of" in r.stdout and "PASS  score_matrix_bytes" in r.stdout
    data = json.loads(out.read_text())
    assert "score_matrix_bytes" in data["passed"] and data["cpu"] and data["exercises"]


def test_edited_copies_refuse_the_stub_and_unknown_regions():
    from chordlab.exercises import edited_copy

    with pytest.raises(NotImplementedError):
        edited_copy("c", "scores_block", "/* your code here */")
    with pytest.raises(ValueError, match="no region marked"):
        edited_copy("cuda", "nope", "int x;")
    folder = edited_copy("cuda", "v1_update", "/* nothing */")
    text = (folder / "flash_v1.cu").read_text()
    assert "v1_update: your version" in text and "expf(s - m_new)" not in text
