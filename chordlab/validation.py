"""Input checking shared by every backend.

`prepare(...)` turns the user's arrays into an `AttentionProblem`: q, k, v as C-contiguous 4-D arrays
``[B, H, L, D]`` of one float dtype, the mask as a 4-D view that broadcasts to ``[B, Hq, Lq, Lk]``, and the
scale as a float. Every backend receives the same checked problem, so no backend re-validates and every
error message is written once, here.

Shapes (``G = Hq // Hkv`` query heads share one key/value head)::

    q    [B, Hq,  Lq, D]   or [Hq, Lq, D]   or [Lq, D]
    k, v [B, Hkv, Lk, D]   or [Hkv, Lk, D]  or [Lk, D]
    mask broadcastable to [B, Hq, Lq, Lk]: [Lq, Lk], [B, 1, Lq, Lk], [B, Hq, Lq, Lk], ...
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

try:
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    _bfloat16 = None

#: 16-bit inputs (chapter 12): the products may be 16-bit, but the softmax, the sums and lse are float32.
HALF_DTYPES = tuple(np.dtype(d) for d in (np.float16,) + ((_bfloat16,) if _bfloat16 is not None else ()))
SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64)) + HALF_DTYPES


def compute_dtype(dtype) -> np.dtype:
    """The dtype a computation runs in: float32 for a 16-bit input (as FlashAttention), else the input's."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype in HALF_DTYPES else dtype


def lse_dtype(dtype) -> np.dtype:
    """The dtype of lse: float32 for 16-bit inputs (FlashAttention's), else the input's."""
    return compute_dtype(dtype)
_LAYOUT_NAMES = {2: "[L, D]", 3: "[H, L, D]", 4: "[B, H, L, D]"}


@dataclass(frozen=True)
class AttentionProblem:
    """A checked attention request in the canonical 4-D layout.

    Attributes:
        q: ``[B, Hq, Lq, D]`` C-contiguous.
        k, v: ``[B, Hkv, Lk, D]`` C-contiguous.
        mask: ``None`` or a 4-D array (bool: True = attend; float: added to the scores) whose every
            dimension is either 1 or the matching size of ``[B, Hq, Lq, Lk]``.
        causal: query ``i`` sees key ``j`` iff ``j <= i + (Lk - Lq)`` (bottom-right aligned).
        scale: multiplies ``q @ k.T`` before the softmax.
        input_ndim: 2, 3 or 4, the layout the caller used (results are returned in it).
        window: ``(left, right)`` (each an int >= 0 or None) or None; see `chordlab.variants`.
        alibi: ALiBi slopes ``[1 or B, Hq]`` (float64) or None.
        softcap: a float > 0 or None.
        block_mask: a `chordlab.variants.BlockMask` built for this shape, or None.
    """

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None
    causal: bool
    scale: float
    input_ndim: int
    window: tuple | None = None
    alibi: np.ndarray | None = None
    softcap: float | None = None
    block_mask: object | None = None

    @property
    def variants(self) -> tuple[str, ...]:
        """The variants this request uses (chapter 11): a subset of window, alibi, softcap, block_mask."""
        used = (("window", self.window), ("alibi", self.alibi), ("softcap", self.softcap),
                ("block_mask", self.block_mask))
        return tuple(name for name, value in used if value is not None)

    @property
    def dtype(self) -> np.dtype:
        return self.q.dtype

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def heads_q(self) -> int:
        return self.q.shape[1]

    @property
    def heads_kv(self) -> int:
        return self.k.shape[1]

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 = multi-head, Hq = multi-query)."""
        return self.heads_q // self.heads_kv

    @property
    def len_q(self) -> int:
        return self.q.shape[2]

    @property
    def len_k(self) -> int:
        return self.k.shape[2]

    @property
    def head_dim(self) -> int:
        return self.q.shape[3]

    @property
    def causal_offset(self) -> int:
        """``Lk - Lq``: query row ``i`` sees keys ``0 .. i + offset`` when causal."""
        return self.len_k - self.len_q

    @property
    def shape(self) -> ProblemShape:
        return ProblemShape(self.batch, self.heads_q, self.heads_kv, self.len_q, self.len_k, self.head_dim)

    def empty_result(self) -> tuple[np.ndarray, np.ndarray]:
        """Output zeros and lse = -inf: the answer when there are no keys (or no queries)."""
        out = np.zeros(self.q.shape, dtype=self.dtype)
        lse = np.full(self.q.shape[:3], -np.inf, dtype=lse_dtype(self.dtype))
        return out, lse

    @property
    def is_half(self) -> bool:
        """16-bit inputs (float16 or bfloat16): computed in float32 unless a kernel takes them as they are."""
        return self.dtype in HALF_DTYPES

    def upcast(self) -> AttentionProblem:
        """The same problem in float32 (for a 16-bit one; itself otherwise): how the NumPy backends compute it."""
        if not self.is_half:
            return self
        import dataclasses

        f32 = [np.ascontiguousarray(x, dtype=np.float32) for x in (self.q, self.k, self.v)]
        return dataclasses.replace(self, q=f32[0], k=f32[1], v=f32[2])

    def to_caller_layout(self, out: np.ndarray, lse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Drop the leading axes that `prepare` added, so results match the caller's layout."""
        drop = 4 - self.input_ndim
        return out.reshape(out.shape[drop:]), lse.reshape(lse.shape[drop:])


@dataclass(frozen=True)
class ProblemShape:
    """The sizes of an attention problem: enough to predict memory and FLOPs without the data."""

    batch: int
    heads_q: int
    heads_kv: int
    len_q: int
    len_k: int
    head_dim: int

    @classmethod
    def of(cls, q_shape, k_shape) -> ProblemShape:
        q4 = (1,) * (4 - len(q_shape)) + tuple(q_shape)
        k4 = (1,) * (4 - len(k_shape)) + tuple(k_shape)
        return cls(q4[0], q4[1], k4[1], q4[2], k4[2], q4[3])

    def flops(self, causal: bool = False) -> float:
        """Multiply-adds of ``QK^T`` and ``PV`` counted as 2 FLOPs each: ``4 B Hq Lq Lk D``.

        Causal attention does about half the work (the upper triangle is skipped)."""
        full = 4.0 * self.batch * self.heads_q * self.len_q * self.len_k * self.head_dim
        return full / 2 if causal else full


def _as_4d(name: str, x: np.ndarray) -> np.ndarray:
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _check_array(name: str, x) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}") from exc
    if x.dtype not in SUPPORTED_DTYPES:
        hint = " (cast it with .astype(np.float32))" if x.dtype.kind in "iufcb" else ""
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got dtype {x.dtype}{hint}")
    if x.ndim not in _LAYOUT_NAMES:
        raise ValueError(
            f"{name} must be 2-D [L, D], 3-D [H, L, D] or 4-D [B, H, L, D]; got shape {x.shape}"
        )
    return x


def check_block_size(name: str, value) -> int | None:
    """None (backend default) or a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive int, 'auto' or None, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def _check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {scale!r}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale


def _check_mask(mask, target: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ and mask.dtype.kind != "f":
        raise TypeError(
            f"mask must be bool (True = attend) or float (added to the scores), got dtype {mask.dtype}"
        )
    if mask.ndim > 4:
        raise ValueError(f"mask has {mask.ndim} dimensions; at most 4 ([B, H, Lq, Lk]) are allowed")
    try:
        np.broadcast_shapes(mask.shape, target)
    except ValueError:
        raise ValueError(
            f"mask of shape {mask.shape} does not broadcast to [B, Hq, Lq, Lk] = {list(target)}; "
            "use [Lq, Lk], [B, 1, Lq, Lk] or [B, Hq, Lq, Lk]"
        ) from None
    mask4 = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if mask4.dtype.kind == "f":
        if np.isnan(mask4).any() or np.isposinf(mask4).any():
            raise ValueError("an additive mask may hold finite values and -inf, not NaN or +inf")
    return np.ascontiguousarray(mask4)


def prepare(q, k, v, *, mask=None, causal=False, scale=None, window=None, alibi_slopes=None, softcap=None,
            block_mask=None) -> AttentionProblem:
    """Check the arguments of `chordlab.attention` and return the canonical `AttentionProblem`.

    Raises `TypeError` for wrong types or dtypes and `ValueError` for shapes that do not fit together,
    each message naming the argument and the expected shape.
    """
    q = _check_array("q", q)
    k = _check_array("k", k)
    v = _check_array("v", v)
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(
            f"q, k and v must use the same layout; got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape [B, Hkv, Lk, D]; got k {k.shape} and v {v.shape}"
        )
    layout = _LAYOUT_NAMES[q.ndim]
    q4, k4, v4 = _as_4d("q", q), _as_4d("k", k), _as_4d("v", v)
    B, Hq, Lq, D = q4.shape
    Bk, Hkv, Lk, Dk = k4.shape
    if D == 0:
        raise ValueError(f"head dim D must be at least 1; q has shape {q.shape} ({layout})")
    if Dk != D:
        raise ValueError(f"head dim D differs: q {q.shape} has D={D}, k {k.shape} has D={Dk} ({layout})")
    if Bk != B:
        raise ValueError(f"batch size differs: q has B={B}, k and v have B={Bk} ({layout})")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(
            f"query heads Hq={Hq} must be a positive multiple of key/value heads Hkv={Hkv} "
            "(grouped-query attention shares each k/v head among Hq // Hkv query heads)"
        )
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    scale = _check_scale(scale, D)
    mask4 = None if mask is None else _check_mask(mask, (B, Hq, Lq, Lk))
    from . import variants

    if block_mask is not None:
        if not isinstance(block_mask, variants.BlockMask):
            raise TypeError(f"block_mask must come from chordlab.block_mask(...), got {type(block_mask).__name__}")
        block_mask.check_fits(B, Hq, Lq, Lk)
    p = AttentionProblem(
        q=np.ascontiguousarray(q4),
        k=np.ascontiguousarray(k4),
        v=np.ascontiguousarray(v4),
        mask=mask4,
        causal=bool(causal),
        scale=scale,
        input_ndim=q.ndim,
        window=variants.check_window(window),
        alibi=variants.check_alibi(alibi_slopes, B, Hq),
        softcap=variants.check_softcap(softcap),
        block_mask=block_mask,
    )
    if Lq and Lk:
        variants.check_rows_have_keys(p)
    return p


def causal_keep(q_start: int, q_stop: int, k_start: int, k_stop: int, offset: int) -> np.ndarray:
    """Boolean ``[q_stop-q_start, k_stop-k_start]`` tile of the causal mask: key j visible to query i
    iff ``j <= i + offset`` with ``offset = Lk - Lq`` (the diagonal aligned bottom-right)."""
    rows = np.arange(q_start, q_stop)[:, None]
    cols = np.arange(k_start, k_stop)[None, :]
    return cols <= rows + offset
