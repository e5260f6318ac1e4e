"""Exercise checks for the chapters: ``check("name", your_function)`` says what is right or wrong.

Each exercise has seeded cases, and each case has a nudge and a hint. `check` calls the reader's function
on every case, compares with chordlab's own answer and returns a `CheckResult` that prints one line per case:
what came back against what was expected ("off by 4x" for a number), and a nudge on the first miss. The full
hint (the formula) comes from the second miss of an exercise on, and the model answer only on request
(`chordlab.solution(name)`, for the teacher to reveal). A stub that still returns 0 or None is told it is not
implemented yet. A tuple and a list are accepted alike. It never raises for a wrong answer: a notebook cell
should not turn red because the reader is learning. Passes are recorded locally (`chordlab.progress`).

Three exercises make the reader write the algorithm itself: the tiled forward with causal tile skipping
(chapter 3), the score micro-kernel in C (chapter 4, `edited_copy` of ``csrc/``) and the online-softmax
update of CUDA's v1, run on the CPU (chapter 5, `edited_copy` of ``cuda/``).
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

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
    nudge: str = ""  # the first miss gets this; the hint (the formula) comes from the second miss on
    extra_check: object = None  # fn(got) -> message or None: a property beyond the values (tile skipping)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _cases_score_matrix_bytes():
    return [
        _Case("B=1 H=8 L=512 float32", (1, 8, 512, 4), 1 * 8 * 512 * 512 * 4,
              "the score matrix holds one number per (batch, head, query, key): B*H*L*L*itemsize",
              nudge="how many scores does one head compute for L queries and L keys?"),
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
                           "scores = q @ k.T / sqrt(D); softmax over the last axis (keys); then @ v",
                           nudge="exp of a large score overflows: what can you subtract from a row without "
                                 "changing its softmax?" if name == "large scores" else
                                 "check the scale 1/sqrt(D) and which axis the softmax normalizes"))
    return cases


def _cases_merge_states():
    r = _rng(2)
    cases = []
    for name, x1, x2 in [
        ("two chunks", r.standard_normal(5), r.standard_normal(7)),
        ("second chunk has the max", r.standard_normal(4), r.standard_normal(4) + 30.0),
        ("first chunk all masked", np.full(3, -np.inf), r.standard_normal(3)),
        ("both chunks all masked", np.full(2, -np.inf), np.full(4, -np.inf)),
    ]:
        a, b = osm.SoftmaxState.of(x1), osm.SoftmaxState.of(x2)
        m = osm.merge_states(a, b)
        empty = name.startswith("both")
        cases.append(_Case(name, (float(a.m), float(a.l), float(b.m), float(b.l)), (float(m.m), float(m.l)),
                           "a fully masked row must stay (m, l) = (-inf, 0): -inf - (-inf) is NaN, so return the "
                           "empty state before subtracting" if empty else
                           "m = max(m1, m2); l = l1*exp(m1 - m) + l2*exp(m2 - m); "
                           "exp(-inf - m) is 0, so an empty state drops out",
                           nudge="what is -inf - (-inf)? A row whose keys are all masked must give zeros, not NaN"
                           if empty else "both sums were taken under their own max: bring them to a common one"))
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
                           "l = alpha*l + rowsum(P); acc = alpha*acc + P @ V",
                           nudge="everything summed so far was under the old max m: when the max grows, "
                                 "rescale l and acc before adding the new tile"))
    return cases


def _cases_c_dot():
    r = _rng(4)
    cases = []
    for n in (0, 7, 64, 67):
        a, b = r.standard_normal(n).astype(np.float32), r.standard_normal(n).astype(np.float32)
        cases.append(_Case(f"length {n}", (a, b), float(a.astype(np.float64) @ b.astype(np.float64)),
                           "sum a[i] * b[i] over i < n; handle the tail when n is not a multiple of your "
                           "vector width", rtol=1e-5, atol=1e-5,
                           nudge="right for some lengths only? Look at the elements after the last full "
                                 "group of your loop" if n % 8 else "check the loop bounds and the final sum"))
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


def _cases_tiled_forward():
    """Chapter 3: the whole tiled forward on [L, D] inputs, with lse and causal tile skipping."""
    from .validation import causal_keep

    r = _rng(5)
    cases = []
    for name, Lq, Lk, D, bq, bk, causal in [
        ("not causal, tiles that do not divide L", 37, 53, 8, 16, 8, False),
        ("causal, square", 64, 64, 16, 16, 16, True),
        ("causal, Lq < Lk (KV cache)", 20, 70, 8, 8, 16, True),
        ("causal, Lq > Lk (first rows see no key)", 30, 12, 4, 8, 4, True),
    ]:
        q, k, v = (r.standard_normal((n, D)) for n in (Lq, Lk, Lk))
        out, lse = attention(q, k, v, causal=causal, backend="reference", return_lse=True)
        visible_tiles = 0
        for i0 in range(0, Lq, bq):
            keep = causal_keep(i0, min(i0 + bq, Lq), 0, Lk, Lk - Lq) if causal else np.ones((1, Lk), bool)
            visible_tiles += sum(keep[:, j0:j0 + bk].any() for j0 in range(0, Lk, bk))
        tracked = _TrackedKeys(k)
        cases.append(_Case(name, (q, tracked, v, bq, bk, causal), (out, lse),
                           "for each query tile: m = -inf, l = 0, acc = 0; for each key tile that the causal "
                           "rule does not hide entirely: S = q_tile @ k_tile.T / sqrt(D) with hidden entries "
                           "-inf, then chapter 3's tile update; out = acc / l (0 where l = 0), lse = m + log(l)",
                           nudge="out first, then lse = m + log(l) per row; rows that see no key give out 0 "
                                 "and lse -inf" if causal else "check the last, partial tile of each axis",
                           extra_check=_tile_skip_check(tracked, visible_tiles, bk, causal)))
    return cases


class _TrackedKeys(np.ndarray):
    """K, counting the key rows read through slices ``k[j0:j1]`` (to see whether causal tiles are skipped)."""

    def __new__(cls, a):
        obj = np.asarray(a).view(cls)
        obj.rows_read = 0
        return obj

    def __array_finalize__(self, obj):
        self.rows_read = 0

    def __getitem__(self, key):
        first = key[0] if isinstance(key, tuple) and key else key
        if isinstance(first, slice):
            self.rows_read += len(range(*first.indices(self.shape[0])))
        return np.asarray(super().__getitem__(key))

    @property
    def T(self):  # noqa: N802 (NumPy's name)
        return np.asarray(self).T


def _tile_skip_check(tracked: _TrackedKeys, visible_tiles: int, bk: int, causal: bool):
    def check(got):
        if not causal or tracked.rows_read == 0:
            return None
        if tracked.rows_read > visible_tiles * bk:
            return (f"right values, but it read {tracked.rows_read} key rows where {visible_tiles} key tiles "
                    f"({visible_tiles * bk} rows at most) are visible: skip the key tiles that causal hides "
                    "entirely, do not compute and then mask them")
        return None
    return check


def _attention_cases(seed: int, shapes) -> list:
    r = _rng(seed)
    cases = []
    for name, (Hq, Lq, Lk, D, causal) in shapes:
        q = r.standard_normal((1, Hq, Lq, D)).astype(np.float32)
        k, v = (r.standard_normal((1, Hq, Lk, D)).astype(np.float32) for _ in range(2))
        want = attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), causal=causal,
                         backend="reference")
        cases.append((name, q, k, v, causal, want))
    return cases


def _cases_simd_scores_block():
    """Chapter 4: the FMA round of the score micro-kernel, written in C, checked on every ISA this CPU runs."""
    from .step4_simd import library

    shapes = [("head dim 64, 130 keys", (2, 67, 130, 64, False)),
              ("odd head dim 23, odd lengths", (1, 41, 59, 23, False))]
    isas = [i.name for i in library().isas() if i.supported]
    return [_Case(f"{isa}: {name}", (q, k, v, isa), want,
                  "for d < D: load qv[c] = vload(QT + d*ldq + c*W) for c < nr; then for r < mr: "
                  "kb = vset1(K[r*ldk + d]) and acc[r][c] = vfma(kb, qv[c], acc[r][c]) for c < nr",
                  rtol=2e-5, atol=2e-5,
                  nudge="every score is a sum over d of K[r][d] * QT[d][query]: one broadcast of K and nr vector "
                        "loads of QT per d, like a GEMM")
            for isa in isas for name, q, k, v, causal, want in _attention_cases(6, shapes)]


def _cases_cuda_v1_update():
    """Chapter 5: the online-softmax step of CUDA's v1, run on the CPU through OpenCL."""
    shapes = [("100 keys", (2, 33, 100, 32, False)), ("causal, odd head dim", (1, 17, 29, 7, True))]
    return [_Case(name, (q, k, v, causal), want,
                  "m_new = fmaxf(m, s); alpha = expf(m - m_new); p = expf(s - m_new); l = l*alpha + p; "
                  "acc[d] = acc[d]*alpha + p*vh[j*HEAD_DIM + d] for every d; m = m_new",
                  rtol=2e-5, atol=2e-5,
                  nudge="chapter 2's update, one key at a time: a new max rescales what l and acc hold")
            for name, q, k, v, causal, want in _attention_cases(7, shapes)]


def _cases_tile_ds():
    """Chapter 9: the backward of one tile: D = rowsum(dO * O), dS = P * (dO V^T - D)."""
    r = _rng(9)
    cases = []
    for name, rows, bk, D, masked in [("a 4x6 tile", 4, 6, 3, False), ("a row that saw no key", 3, 5, 4, True)]:
        S = r.standard_normal((rows, bk))
        if masked:
            S[1] = -np.inf
        m = np.where(np.isneginf(S.max(axis=1)), 0.0, S.max(axis=1))
        P = np.exp(S - m[:, None])
        lsum = P.sum(axis=1)
        P = np.divide(P, lsum[:, None], out=np.zeros_like(P), where=lsum[:, None] > 0)
        V, dO = r.standard_normal((bk, D)), r.standard_normal((rows, D))
        O = P @ V
        expected = P * (dO @ V.T - (dO * O).sum(axis=1, keepdims=True))
        cases.append(_Case(name, (P, dO, V, O), expected,
                           "dP = dO @ V.T; D = (dO * O).sum(axis=1, keepdims=True); dS = P * (dP - D)",
                           nudge="the softmax's Jacobian: dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik), and that sum "
                                 "equals rowsum(dO * O)"))
    return cases


def _cases_block_table_lookup():
    """Chapter 10: where key j of a sequence sits in a paged cache: (page, slot) from its block table."""
    cases = []
    for name, table, size, j in [("one key", [7, 2, 5], 4, np.array(9)),
                                 ("every key of a 3-page sequence", [3, 0, 6], 16, np.arange(40))]:
        table = np.asarray(table)
        expected = (table[j // size], j % size)
        cases.append(_Case(name, (table, size, j), expected,
                           "page = block_table[j // page_size]; slot = j % page_size",
                           nudge="key j is the (j // page_size)-th page of the sequence, at some offset inside it; "
                                 "the block table says which physical page that is"))
    return cases


def _cases_to_bfloat16():
    """Chapter 12: float32 -> bfloat16 bits with round-to-nearest-even, in NumPy."""
    from ml_dtypes import bfloat16

    ties = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), 1.0 + 2.0**-8 + 2.0**-20], np.float32)
    spread = _rng(12).standard_normal(50).astype(np.float32) * np.float32(1e3)
    cases = []
    for name, x in [("exact halves: ties go to the even neighbour", ties),
                    ("50 numbers, with 0, inf and the largest float32",
                     np.concatenate([spread, np.array([0.0, -0.0, np.inf, -np.inf, 3.4028235e38], np.float32)]))]:
        cases.append(_Case(name, (x,), x.astype(bfloat16).view(np.uint16),
                           "bits = x.view(np.uint32); bits + 0x7FFF + ((bits >> 16) & 1), then >> 16, as uint16",
                           rtol=0, atol=0,
                           nudge="keep the top 16 bits of x.view(np.uint32), but round: add half of the dropped "
                                 "part first, and on an exact half round to the neighbour whose last kept bit is 0"))
    return cases


def _cases_sink_window_mask():
    """Chapter 11: a mask_fn for attention sinks (StreamingLLM): causal, the last 4 keys, and always the first 2."""
    def expected(q, kv):
        return (kv <= q) & ((q - kv < 4) | (kv < 2))

    cases = []
    for name, L, lk in [("12 queries, 12 keys", 12, 12), ("a block of queries 40..47, keys 0..47", 8, 48)]:
        q = np.arange(L)[:, None] + (40 if lk != L else 0)
        kv = np.arange(lk)[None, :]
        cases.append(_Case(name, (0, 0, q, kv), expected(q, kv),
                           "(kv_idx <= q_idx) & ((q_idx - kv_idx < 4) | (kv_idx < 2))",
                           nudge="three conditions: no future key; the key is one of the last 4; or it is one of "
                                 "the first 2 (the sinks). Which combine with 'and', which with 'or'?"))
    return cases


_EXERCISES = {
    "score_matrix_bytes": _cases_score_matrix_bytes,
    "attention_2d": _cases_attention_2d,
    "merge_states": _cases_merge_states,
    "tile_update": _cases_tile_update,
    "tiled_forward": _cases_tiled_forward,
    "c_dot": _cases_c_dot,
    "simd_scores_block": _cases_simd_scores_block,
    "v2_shared_bytes": _cases_v2_shared_bytes,
    "cuda_v1_update": _cases_cuda_v1_update,
    "working_set": _cases_working_set,
    "mha_params": _cases_mha_params,
    "w2_workgroup_bytes": _cases_w2_workgroup_bytes,
    "tile_ds": _cases_tile_ds,
    "sink_window_mask": _cases_sink_window_mask,
    "block_table_lookup": _cases_block_table_lookup,
    "to_bfloat16": _cases_to_bfloat16,
}

_misses: dict[str, int] = {}


def exercises() -> list[str]:
    return list(_EXERCISES)


def _describe(x: np.ndarray) -> str:
    if x.ndim == 0:
        return f"{float(x):.6g}"
    return f"an array of shape {x.shape}"


def _compare(got, expected, case: _Case) -> str | None:
    several = isinstance(expected, tuple)
    exp_items = expected if several else (expected,)
    got_items = tuple(got) if several and isinstance(got, (tuple, list)) else (got,)
    if len(got_items) != len(exp_items):
        kind = type(got).__name__
        names = ", ".join(f"x{i + 1}" for i in range(len(exp_items)))
        return (f"returned {len(got_items)} value(s) (a {kind}), expected {len(exp_items)}: "
                f"return them as a tuple or a list, e.g. `return {names}`")
    for i, (g, e) in enumerate(zip(got_items, exp_items, strict=True)):
        label = f"value {i + 1}: " if len(exp_items) > 1 else ""
        if g is None:
            return f"{label}returned None: is a `return` missing?"
        try:
            g = np.asarray(g, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{label}returned {type(g).__name__}, expected numbers"
        e = np.asarray(e, dtype=np.float64)
        if g.shape != e.shape:
            return f"{label}shape {g.shape}, expected {e.shape}"
        if np.isnan(g).any() and not np.isnan(e).any():
            return f"{label}contains NaN where the answer has none"
        if not np.allclose(g, e, rtol=case.rtol, atol=case.atol, equal_nan=True):
            if e.ndim == 0:
                ratio = ""
                if np.isfinite(g) and np.isfinite(e) and g != 0 and e != 0:
                    q = float(g / e)
                    ratio = f" (off by {q:.3g}x)" if q > 1 else f" (off by 1/{1 / q:.3g}x)"
                return f"{label}got {_describe(g)}, expected {_describe(e)}{ratio}"
            with np.errstate(invalid="ignore"):
                diff = np.abs(np.where(np.isinf(e) & (g == e), 0.0, g - e))
            where = np.unravel_index(np.nanargmax(diff), diff.shape)
            return (f"{label}differs from the expected answer by up to {np.nanmax(diff):.3g} (at index "
                    f"{tuple(int(x) for x in where)}: got {g[where]:.6g}, expected {e[where]:.6g})")
    return None


def _looks_like_stub(results: list) -> bool:
    """Every case came back 0 / zeros / None while the answers are not: the exercise's stub, unchanged."""
    def zero(x):
        if x is None:
            return True
        try:
            a = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError):
            return False
        return a.size > 0 and not np.any(a)
    got_zero = all(zero(g) if not isinstance(g, (tuple, list)) else all(zero(x) for x in g) for g, _ in results)
    want_zero = all(zero(e) if not isinstance(e, tuple) else all(zero(x) for x in e) for _, e in results)
    return bool(results) and got_zero and not want_zero


def check(exercise: str, fn) -> CheckResult:
    """Run the reader's ``fn`` on every case of ``exercise``; returns a printable `CheckResult`."""
    if exercise not in _EXERCISES:
        raise ValueError(f"unknown exercise {exercise!r}; choose one of {', '.join(_EXERCISES)}")
    result = CheckResult(exercise, True)
    misses = _misses.get(exercise, 0)
    outcomes = []
    for case in _EXERCISES[exercise]():
        try:
            with np.errstate(all="ignore"):
                got = fn(*[np.copy(a) if type(a) is np.ndarray else a for a in case.args])
        except NotImplementedError:
            result.passed = False
            result.lines = ["not implemented yet: fill in the function body (or the C) and run the cell again"]
            return result
        except Exception as exc:  # the reader's code failing is feedback, not a crash
            result.passed = False
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result.lines.append(f"{case.name}: raised {type(exc).__name__}: {exc} (line {where.lineno})")
            continue
        outcomes.append((got, case.expected))
        problem = _compare(got, case.expected, case) or (case.extra_check(got) if case.extra_check else None)
        if problem:
            result.passed = False
            advice = case.hint if misses >= 1 or not case.nudge else case.nudge
            result.lines.append(f"{case.name}: {problem}. {'Hint' if advice is case.hint else 'Nudge'}: {advice}")
        else:
            result.lines.append(f"{case.name}: ok")
    if not result.passed and _looks_like_stub(outcomes):
        result.lines = ["not implemented yet: every case returned 0 (the stub). Write the function body and run "
                        "the cell again"]
        return result
    if result.passed:
        from .progress import record_pass

        record_pass(exercise)
    else:
        _misses[exercise] = misses + 1
        if misses >= 2:
            result.lines.append(f"Still stuck? Your teacher can show the model answer: "
                                f"chordlab.solution({exercise!r})")
    return result


def edited_copy(kind: str, exercise: str, code: str) -> Path:
    """A temporary copy of ``csrc/`` (kind "c") or ``cuda/`` (kind "cuda") with the region marked
    ``EXERCISE <exercise> BEGIN`` .. ``END`` replaced by ``code``; returns the folder.

    NotImplementedError while ``code`` still says "your code here" (the exercise's stub)."""
    if "your code here" in code:
        raise NotImplementedError(f"exercise {exercise}: write your code in place of 'your code here'")
    from .step4_simd import CSRC
    from .step5_cuda import CUDA_DIR

    if kind not in ("c", "cuda"):
        raise ValueError(f"kind must be 'c' or 'cuda', got {kind!r}")
    src = {"c": CSRC, "cuda": CUDA_DIR}[kind]
    dest = Path(tempfile.mkdtemp(prefix=f"chordlab-{exercise}-")) / src.name
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.so"))
    for path in dest.iterdir():
        if not path.is_file() or path.suffix not in (".c", ".inc", ".cu", ".h"):
            continue
        text = path.read_text()
        begin, end = f"EXERCISE {exercise} BEGIN", f"EXERCISE {exercise} END"
        if begin in text:
            head, rest = text.split(begin, 1)
            head = head[: head.rindex("/*")]
            rest = rest.split(end, 1)[1]
            rest = rest[rest.index("*/") + 2:]
            path.write_text(head + f"/* {exercise}: your version */\n" + code + "\n" + rest)
            return dest
    raise ValueError(f"no region marked for exercise {exercise!r} in {src}")
