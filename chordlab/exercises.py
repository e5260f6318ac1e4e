"""Exercise checks for the chapters: ``check("name", your_function)`` says what is right or wrong.

Each exercise has a set of seeded cases and a hint per case. `check` calls the reader's function on every
case, compares with chordlab's own answer, and returns a `CheckResult` that prints one line per case.
It never raises for a wrong answer (a notebook cell should not turn red because the reader is learning).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import numpy as np

from . import step2_online_softmax as osm
from .api import attention


@dataclass
class CheckResult:
    exercise: str
    passed: bool
    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = ("PASS" if self.passed else "NOT YET") + f" {self.exercise}"
        return "\n".join([head] + ["  " + x for x in self.lines])

    def __repr__(self) -> str:
        return str(self)

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class _Case:
    name: str
    args: tuple
    expected: object
    hint: str
    rtol: float = 1e-5
    atol: float = 1e-6


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _cases_score_matrix_bytes():
    return [
        _Case("B=1 H=8 L=512 float32", (1, 8, 512, 4), 1 * 8 * 512 * 512 * 4,
              "the score matrix holds one number per (batch, head, query, key): B*H*L*L*itemsize"),
        _Case("B=2 H=16 L=4096 float64", (2, 16, 4096, 8), 2 * 16 * 4096 * 4096 * 8,
              "itemsize is 8 for float64"),
        _Case("L=1", (1, 1, 1, 4), 4, "one query and one key make one score"),
    ]


def _cases_attention_2d():
    r = _rng(1)
    cases = []
    for name, L, D, s in [("small", 4, 3, 1.0), ("square 32x16", 32, 16, 1.0), ("large scores", 8, 4, 40.0)]:
        q, k, v = (r.standard_normal((L, D)) * (s if i < 2 else 1.0) for i in range(3))
        cases.append(_Case(name, (q, k, v), attention(q, k, v, backend="reference"),
                           "softmax(q @ k.T / sqrt(D)) @ v; for large scores subtract each row's max "
                           "before exp" if name == "large scores" else
                           "scores = q @ k.T / sqrt(D); softmax over the last axis (keys); then @ v"))
    return cases


def _cases_merge_states():
    r = _rng(2)
    cases = []
    for name, x1, x2 in [
        ("two chunks", r.standard_normal(5), r.standard_normal(7)),
        ("second chunk has the max", r.standard_normal(4), r.standard_normal(4) + 30.0),
        ("first chunk all masked", np.full(3, -np.inf), r.standard_normal(3)),
    ]:
        a, b = osm.SoftmaxState.of(x1), osm.SoftmaxState.of(x2)
        m = osm.merge_states(a, b)
        cases.append(_Case(name, (float(a.m), float(a.l), float(b.m), float(b.l)), (float(m.m), float(m.l)),
                           "m = max(m1, m2); l = l1*exp(m1 - m) + l2*exp(m2 - m); "
                           "exp(-inf - m) is 0, so an empty state drops out"))
    return cases


def _cases_tile_update():
    r = _rng(3)
    cases = []
    for name, n_seen, bk in [("first tile", 0, 4), ("second tile", 4, 4), ("tile with a new max", 4, 3)]:
        rows, D = 3, 5
        s_old = r.standard_normal((rows, n_seen))
        s_new = r.standard_normal((rows, bk)) + (6.0 if "max" in name else 0.0)
        v_old, v_new = r.standard_normal((n_seen, D)), r.standard_normal((bk, D))
        if n_seen:
            m = s_old.max(axis=1)
            p = np.exp(s_old - m[:, None])
            l, acc = p.sum(axis=1), p @ v_old
        else:
            m, l, acc = np.full(rows, -np.inf), np.zeros(rows), np.zeros((rows, D))
        m2 = np.maximum(m, s_new.max(axis=1))
        p2 = np.exp(s_new - m2[:, None])
        alpha = np.exp(m - m2)
        expected = (m2, alpha * l + p2.sum(axis=1), alpha[:, None] * acc + p2 @ v_new)
        cases.append(_Case(name, (m, l, acc, s_new, v_new), expected,
                           "m_new = max(m, rowmax(S)); P = exp(S - m_new); alpha = exp(m - m_new); "
                           "l = alpha*l + rowsum(P); acc = alpha*acc + P @ V"))
    return cases


def _cases_c_dot():
    r = _rng(4)
    cases = []
    for n in (0, 7, 64, 67):
        a, b = r.standard_normal(n).astype(np.float32), r.standard_normal(n).astype(np.float32)
        cases.append(_Case(f"length {n}", (a, b), float(a.astype(np.float64) @ b.astype(np.float64)),
                           "sum a[i] * b[i] over i < n; handle the tail when n is not a multiple of your "
                           "vector width", rtol=1e-5, atol=1e-5))
    return cases


def _cases_v2_shared_bytes():
    from .step5_cuda import shared_bytes

    return [_Case(f"head dim {D}, block_q={bq}, block_k={bk}", (D, bq, bk), shared_bytes("v2", D, bq, bk),
                  "four float arrays: q_tile[BLOCK_Q][D+1], k_tile[BLOCK_K][D+1], v_tile[BLOCK_K][D], "
                  "s_tile[BLOCK_Q][BLOCK_K+1]; 4 bytes per float", rtol=0, atol=0)
            for D, bq, bk in [(64, 64, 32), (128, 32, 16), (80, 16, 8)]]


def _cases_working_set():
    from .tuning import working_set_bytes

    return [_Case(f"block_q={bq} block_k={bk} D={D}", (bq, bk, D), working_set_bytes(bq, bk, D, 4),
                  "float32 tiles: Q (block_q x D), K and V (block_k x D each), scores (block_q x block_k) and the "
                  "output accumulator (block_q x D); 4 bytes each", rtol=0, atol=0)
            for bq, bk, D in [(64, 128, 64), (16, 16, 128), (128, 32, 80)]]


def _cases_mha_params():
    return [_Case(f"d_model={d} heads={h} kv_heads={kv}", (d, h, kv), 2 * d * d + 2 * d * kv * (d // h),
                  "W_q and W_o are d_model x d_model; W_k and W_v are d_model x (kv_heads * head_dim), "
                  "head_dim = d_model // heads", rtol=0, atol=0)
            for d, h, kv in [(512, 8, 8), (512, 8, 2), (4096, 32, 1)]]


def _cases_w2_workgroup_bytes():
    from .step8_webgpu import workgroup_bytes

    return [_Case(f"head dim {D}, block_k={bk}", (D, bk), workgroup_bytes("w2", D, 16, bk),
                  "two var<workgroup> arrays of block_k x head_dim floats (the K and the V tile), 4 bytes each",
                  rtol=0, atol=0) for D, bk in [(64, 32), (128, 16), (80, 8)]]


_EXERCISES = {
    "score_matrix_bytes": _cases_score_matrix_bytes,
    "attention_2d": _cases_attention_2d,
    "merge_states": _cases_merge_states,
    "tile_update": _cases_tile_update,
    "c_dot": _cases_c_dot,
    "v2_shared_bytes": _cases_v2_shared_bytes,
    "working_set": _cases_working_set,
    "mha_params": _cases_mha_params,
    "w2_workgroup_bytes": _cases_w2_workgroup_bytes,
}


def exercises() -> list[str]:
    return list(_EXERCISES)


def _compare(got, expected, case: _Case) -> str | None:
    exp_items = expected if isinstance(expected, tuple) else (expected,)
    got_items = got if isinstance(got, tuple) else (got,)
    if len(got_items) != len(exp_items):
        return f"returned {len(got_items)} value(s), expected {len(exp_items)}"
    for i, (g, e) in enumerate(zip(got_items, exp_items, strict=True)):
        label = f"value {i + 1}: " if len(exp_items) > 1 else ""
        try:
            g = np.asarray(g, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{label}returned {type(g).__name__}, expected numbers"
        e = np.asarray(e, dtype=np.float64)
        if g.shape != e.shape:
            return f"{label}shape {g.shape}, expected {e.shape}"
        if np.isnan(g).any() and not np.isnan(e).any():
            return f"{label}contains NaN"
        if not np.allclose(g, e, rtol=case.rtol, atol=case.atol, equal_nan=True):
            with np.errstate(invalid="ignore"):
                err = np.nanmax(np.abs(np.where(np.isinf(e) & (g == e), 0.0, g - e)))
            return f"{label}differs from the expected answer by up to {err:.3g}"
    return None


def check(exercise: str, fn) -> CheckResult:
    """Run the reader's ``fn`` on every case of ``exercise``; returns a printable `CheckResult`."""
    if exercise not in _EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}; choose one of {', '.join(_EXERCISES)}")
    result = CheckResult(exercise, True)
    for case in _EXERCISES[exercise]():
        try:
            with np.errstate(all="ignore"):
                got = fn(*[np.copy(a) if isinstance(a, np.ndarray) else a for a in case.args])
        except NotImplementedError:
            result.passed = False
            result.lines.append("not implemented yet: fill in the function body and run the cell again")
            return result
        except Exception as exc:  # the reader's code failing is feedback, not a crash
            result.passed = False
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result.lines.append(f"{case.name}: raised {type(exc).__name__}: {exc} (line {where.lineno})")
            continue
        problem = _compare(got, case.expected, case)
        if problem:
            result.passed = False
            result.lines.append(f"{case.name}: {problem}. Hint: {case.hint}")
        else:
            result.lines.append(f"{case.name}: ok")
    return result
