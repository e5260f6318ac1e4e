"""The backend interface and registry.

A backend is one way of computing attention. Each one subclasses `Backend` and provides:

* ``name`` and a one-line ``summary``;
* ``available() -> Availability``: whether it runs here, and if not, a human reason and a fix;
* ``forward(problem, block_q, block_k) -> (out, lse)``: out ``[B, Hq, Lq, D]``, lse ``[B, Hq, Lq]`` in the
  problem's dtype, for an already validated `AttentionProblem` with ``Lq, Lk >= 1``;
* ``extra_bytes(shape, itemsize, ...)``: the working memory ``forward`` allocates beyond its result;
* ``takes_block_sizes`` and ``default_blocks``: whether ``block_q``/``block_k`` mean anything to it.

`register` adds a backend to the registry; `backends()` lists them all with their availability.
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from .validation import AttentionProblem, ProblemShape


class BackendError(RuntimeError):
    """A backend failed while it ran (a driver or compiler error): the message names the backend, the reason in
    one line and what to do. The third-party exception is kept as ``.original`` for debugging."""

    original: BaseException | None = None


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


#: The NumPy backends, which every machine has; ``CHORDLAB_DISABLE=optional`` turns off all the others.
ALWAYS_THERE = ("reference", "tiled")


def disabled_by_env(name: str) -> Availability | None:
    """``Availability(False, ...)`` when ``$CHORDLAB_DISABLE`` turns backend ``name`` off, else None.

    ``CHORDLAB_DISABLE=simd,webgpu`` names backends; ``CHORDLAB_DISABLE=optional`` means every backend but
    the NumPy ones: how the tests run the chapters as on a laptop that has none of the optional parts."""
    wanted = {w.strip() for w in os.environ.get("CHORDLAB_DISABLE", "").split(",") if w.strip()}
    if name in wanted or ("optional" in wanted and name not in ALWAYS_THERE):
        return Availability(False, f"turned off by CHORDLAB_DISABLE={os.environ['CHORDLAB_DISABLE']}")
    return None


class Backend(ABC):
    name: str = ""
    summary: str = ""
    takes_block_sizes: bool = False
    default_blocks: tuple[int, int] | None = None
    dtypes: tuple[np.dtype, ...] = (np.dtype(np.float32), np.dtype(np.float64))
    #: Lower runs first when ``backend="auto"`` picks among the available backends.
    auto_priority: int = 100
    #: Backend-specific keyword options `attention` passes through (e.g. ``isa``, ``threads``).
    options: tuple[str, ...] = ()
    #: The largest head dim the backend's kernels take (None: any).
    max_head_dim: int | None = None
    #: The variants of chapter 11 (``window``, ``alibi``, ``softcap``, ``block_mask``) its forward computes, and
    #: those its backward computes; a request with another is refused clearly and ``auto`` passes it over.
    variants: frozenset = frozenset()
    backward_variants: frozenset = frozenset()

    def available(self) -> Availability:
        off = disabled_by_env(self.name)
        return Availability(True) if off is None else off

    def __init_subclass__(cls, **kwargs):
        """Every backend's ``available`` answers "no" first when ``$CHORDLAB_DISABLE`` turns it off."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("available")
        if own is None or getattr(own, "_honours_env", False):
            return

        @functools.wraps(own)
        def available(self) -> Availability:
            off = disabled_by_env(self.name)  # an Availability(False) is falsy: no `or` here
            return own(self) if off is None else off

        available._honours_env = True
        cls.available = available

    def supports(self, problem: AttentionProblem) -> Availability:
        """Whether this backend can run this particular problem (dtype, head dim, ...)."""
        if problem.dtype not in self.dtypes:
            names = ", ".join(str(d) for d in self.dtypes)
            hint = "; cast the inputs with .astype(np.float32) or use backend='tiled'" if len(self.dtypes) == 1 else ""
            return Availability(False, f"backend {self.name!r} computes in {names}, not {problem.dtype}{hint}")
        if self.max_head_dim is not None and problem.head_dim > self.max_head_dim:
            return Availability(False, f"backend {self.name!r} takes head dims up to {self.max_head_dim}, "
                                       f"got {problem.head_dim}")
        return self._supports_variants(problem, self.variants, "")

    def supports_backward(self, problem: AttentionProblem) -> Availability:
        """Whether this backend's backward can run this problem (it has one, and computes its variants)."""
        if not self.has_backward:
            return Availability(False, "has no backward pass yet")
        return self._supports_variants(problem, self.backward_variants, " backward")

    def _supports_variants(self, problem: AttentionProblem, have: frozenset, what: str) -> Availability:
        missing = [v for v in problem.variants if v not in have]
        if missing:
            has = ", ".join(sorted(have)) or "none"
            return Availability(False, f"backend {self.name!r}{what} does not compute {missing[0]} "
                                       f"(its variants: {has}); use backend='auto' or 'tiled'")
        return Availability(True)

    @abstractmethod
    def forward(self, problem: AttentionProblem, block_q: int | None, block_k: int | None, **options
                ) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(out [B, Hq, Lq, D], lse [B, Hq, Lq])`` for a validated, non-empty problem."""

    @abstractmethod
    def extra_bytes(self, shape: ProblemShape, itemsize: int, *, block_q=None, block_k=None,
                    causal=False, mask_shape=None, **options) -> int:
        """Working bytes ``forward`` allocates beyond its output, for a problem of this shape."""

    #: What to do when ``forward`` fails at run time (driver, compiler): appended to the `BackendError`.
    run_advice: str = "try another backend (chordlab.backends() lists them)"

    def failure_reason(self, exc: BaseException) -> str:
        """One readable line saying why ``forward`` failed with ``exc``."""
        text = str(exc).strip()
        return (text.splitlines()[0] if text else type(exc).__name__)[:500]

    #: Whether `backward` is implemented (`chordlab.attention_backward` passes over backends without it).
    has_backward: bool = False

    def backward(self, problem: AttentionProblem, out: np.ndarray, lse: np.ndarray, dout: np.ndarray,
                 block_q: int | None = None, block_k: int | None = None, **options
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dq [B,Hq,Lq,D], dk [B,Hkv,Lk,D], dv)`` from the forward's ``out``/``lse`` and ``dout``."""
        raise NotImplementedError(f"backend {self.name!r} has no backward pass")

    def backward_extra_bytes(self, shape: ProblemShape, itemsize: int, **options) -> int:
        """Working bytes ``backward`` allocates beyond the three gradients."""
        raise NotImplementedError(f"backend {self.name!r} has no backward pass")

    #: Whether `decode` is implemented (chapter 10's `chordlab.decode` over a KV cache), and its options.
    has_decode: bool = False
    decode_options: tuple[str, ...] = ()

    def supports_decode(self, problem) -> Availability:
        """Whether `decode` can run this `chordlab.decoding.DecodeProblem` (dtypes of q and of the cache)."""
        if not self.has_decode:
            return Availability(False, "has no decode kernel")
        return Availability(True)

    def decode(self, problem, splits: int, **options) -> tuple[np.ndarray, np.ndarray]:
        """``(out [B, Hq, Lq, D], lse [B, Hq, Lq])`` of a checked decode request, in ``splits`` split-KV ranges."""
        raise NotImplementedError(f"backend {self.name!r} has no decode kernel")

    def decode_threads(self, **options) -> int:
        """Threads a decode call would use (``splits="auto"`` gives each two items)."""
        return 1

    def check_options(self, options: dict) -> None:
        """TypeError for an option this backend does not take."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            takes = ", ".join(self.options) or "none"
            raise TypeError(f"backend {self.name!r} takes no option {unknown[0]!r} (its options: {takes})")

    def memory_advice(self) -> str:
        """What to do when a request does not fit the memory budget."""
        return "Use smaller inputs (batch, heads or length)" + (
            " or smaller block sizes." if self.takes_block_sizes else ".")

    def resolve_blocks(self, block_q: int | None, block_k: int | None) -> tuple[int, int]:
        dq, dk = self.default_blocks or (0, 0)
        return (block_q or dq, block_k or dk)

    def __repr__(self) -> str:
        return f"<backend {self.name!r}: {self.summary}>"


@dataclass(frozen=True)
class BackendInfo:
    """One row of `backends()`."""

    name: str
    available: bool
    reason: str
    summary: str
    takes_block_sizes: bool


class BackendTable(list):
    """A list of `BackendInfo` that prints as a table (in a terminal and in a notebook)."""

    def __str__(self) -> str:
        lines = [f"{'backend':<10} {'available':<10} notes"]
        for b in self:
            note = b.summary if b.available else f"unavailable: {b.reason}"
            lines.append(f"{b.name:<10} {'yes' if b.available else 'no':<10} {note}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


_REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add (or replace) a backend under its name."""
    if not backend.name or backend.name == "auto":
        raise ValueError(f"a backend needs a name other than 'auto', got {backend.name!r}")
    _REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The registered backend called ``name`` (not ``"auto"``; see `chordlab.attention`)."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name (str), got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) + ", auto"
        raise ValueError(f"unknown backend {name!r}; choose one of: {known}") from None


def backend_names() -> list[str]:
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].auto_priority, n))


def backends() -> BackendTable:
    """Every registered backend, whether it is available here, and if not, why."""
    rows = BackendTable()
    for name in backend_names():
        b = _REGISTRY[name]
        a = b.available()
        rows.append(BackendInfo(name, a.ok, a.reason, b.summary, b.takes_block_sizes))
    return rows
