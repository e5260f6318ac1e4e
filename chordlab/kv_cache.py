"""KV caches for decoding (chapter 10): a contiguous cache per batch row, and a paged cache as in vLLM.

Generation runs attention once per new token. The keys and values of every earlier token do not change, so they
are kept in a cache and only the new token's are appended. Shapes::

    KVCache       k, v [B, Hkv, capacity, D]          row b holds its sequence's keys 0 .. lengths[b]
    PagedKVCache  k, v [Hkv, num_pages, page_size, D]  a sequence's key j sits in page block_table[j // page_size],
                                                      slot j % page_size; pages come from a free list. Head-major:
                                                      one head's pages are one region, so a sequence whose pages
                                                      were handed out in order is read as one stream per head

The dtype is float32, float16 or bfloat16 (``ml_dtypes.bfloat16``, the type JAX uses; float64 too, for exact
checks). A decode kernel converts K and V to float32 as it loads them; memory and bandwidth halve in 16 bits.

Every refused operation (past the capacity, out of pages, a wrong shape or dtype) raises before it writes, so the
cache is unchanged by it.
"""

from __future__ import annotations

import numbers

import numpy as np

try:
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover - ml_dtypes is a dependency
    bfloat16 = None

#: The K/V dtypes a cache may hold.
CACHE_DTYPES = tuple(np.dtype(d) for d in (np.float32, np.float16, np.float64) + ((bfloat16,) if bfloat16 else ()))


def cache_dtype(dtype) -> np.dtype:
    """``dtype`` as a NumPy dtype, if a cache can hold it ("bfloat16" is accepted by name)."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        if bfloat16 is None:
            raise TypeError("bfloat16 needs ml_dtypes: pip install ml_dtypes")
        dtype = bfloat16
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be one of {', '.join(map(str, CACHE_DTYPES))}, got {dtype!r}") from None
    if dt not in CACHE_DTYPES:
        raise TypeError(f"a KV cache holds {', '.join(map(str, CACHE_DTYPES))}, not {dt}")
    return dt


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_kv(k, v, heads: int, head_dim: int, dtype: np.dtype, shape_text: str, ndim: int):
    for name, x in (("k", k), ("v", v)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array {shape_text}, got {type(x).__name__}")
        if x.dtype != dtype:
            raise TypeError(f"{name} has dtype {x.dtype}; this cache holds {dtype} (convert with "
                            f"{name}.astype(cache.dtype))")
        if x.ndim != ndim:
            raise ValueError(f"{name} must be {shape_text}, got shape {x.shape}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
    if k.shape[-3] != heads or k.shape[-1] != head_dim:
        raise ValueError(f"k and v must have {heads} kv heads and head dim {head_dim} {shape_text}; got {k.shape}")


CACHE_LINE = 64


def aligned_zeros(shape, dtype, align: int = CACHE_LINE) -> np.ndarray:
    """``np.zeros(shape, dtype)`` whose data starts on an ``align``-byte boundary.

    NumPy places a large array 16 bytes past a page boundary, so with rows of 512 bytes (D = 128, float32) every
    64-byte vector load of the decode kernel would straddle two cache lines. Aligned to a line, each load touches one:
    decode reads a float32 cache 2-7% faster on Zen 5 (measured 2026-11-26).
    """
    if align < 1 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


class KVCache:
    """A contiguous KV cache: ``k, v [batch, kv_heads, capacity, head_dim]`` and each row's length.

    ``append(k, v)`` adds ``k, v [B, Hkv, L, D]`` after each row's current end; ``lengths=`` (``[B]`` ints
    ``<= L``) appends only the first ``lengths[b]`` of them to row ``b``, as a server does with sequences of
    different lengths. ``keys(b)`` and ``values(b)`` are views of row b's cached part.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int, dtype=np.float32):
        self.batch, self.kv_heads = _positive("batch", batch), _positive("kv_heads", kv_heads)
        self.head_dim, self.capacity = _positive("head_dim", head_dim), _positive("capacity", capacity)
        self.dtype = cache_dtype(dtype)
        shape = (self.batch, self.kv_heads, self.capacity, self.head_dim)
        self.k = aligned_zeros(shape, self.dtype)
        self.v = aligned_zeros(shape, self.dtype)
        self._lengths = np.zeros(self.batch, np.int64)

    @property
    def lengths(self) -> np.ndarray:
        """Cached keys per batch row (a copy)."""
        return self._lengths.copy()

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (its capacity, used or not)."""
        return self.k.nbytes + self.v.nbytes

    def append(self, k, v, lengths=None) -> None:
        _check_kv(k, v, self.kv_heads, self.head_dim, self.dtype, "[B, Hkv, L, D]", 4)
        if k.shape[0] != self.batch:
            raise ValueError(f"k and v must have batch {self.batch}, got {k.shape[0]}")
        L = k.shape[2]
        if lengths is None:
            add = np.full(self.batch, L, np.int64)
        else:
            add = np.asarray(lengths)
            if add.shape != (self.batch,) or add.dtype.kind not in "iu":
                raise ValueError(f"lengths must be {self.batch} ints (tokens to append per row), got {lengths!r}")
            if (add < 0).any() or (add > L).any():
                raise ValueError(f"lengths must be between 0 and L = {L}, got {add.tolist()}")
            add = add.astype(np.int64)
        new = self._lengths + add
        if (new > self.capacity).any():
            b = int(np.argmax(new > self.capacity))
            raise ValueError(f"appending {int(add[b])} tokens to row {b} (holding {int(self._lengths[b])}) would pass "
                             f"the capacity {self.capacity}; nothing was appended")
        for b in range(self.batch):
            start, n = int(self._lengths[b]), int(add[b])
            self.k[b, :, start:start + n] = k[b, :, :n]
            self.v[b, :, start:start + n] = v[b, :, :n]
        self._lengths = new

    def keys(self, b: int) -> np.ndarray:
        return self.k[b, :, : self._lengths[b]]

    def values(self, b: int) -> np.ndarray:
        return self.v[b, :, : self._lengths[b]]

    def reset(self) -> None:
        self._lengths[:] = 0

    def __repr__(self) -> str:
        return (f"KVCache(batch={self.batch}, kv_heads={self.kv_heads}, head_dim={self.head_dim}, "
                f"capacity={self.capacity}, dtype={self.dtype}, lengths={self._lengths.tolist()})")


class PagedKVCache:
    """A paged KV cache (vLLM's PagedAttention): a pool ``k, v [kv_heads, num_pages, page_size, head_dim]``, a
    free list, and per sequence a block table of the pages it holds, in order.

    ``add_sequence()`` returns a new sequence id; ``append(seq, k, v)`` with ``k, v [Hkv, L, D]`` takes pages from
    the free list as needed; ``free(seq)`` gives its pages back. ``pages_in_use`` and ``fragmentation`` (the share
    of the slots in used pages that hold no token: only each sequence's last page is partly empty) describe it.
    """

    def __init__(self, num_pages: int, page_size: int, kv_heads: int, head_dim: int, dtype=np.float32):
        self.num_pages, self.page_size = _positive("num_pages", num_pages), _positive("page_size", page_size)
        self.kv_heads, self.head_dim = _positive("kv_heads", kv_heads), _positive("head_dim", head_dim)
        self.dtype = cache_dtype(dtype)
        shape = (self.kv_heads, self.num_pages, self.page_size, self.head_dim)
        self.k = aligned_zeros(shape, self.dtype)
        self.v = aligned_zeros(shape, self.dtype)
        self._free = list(range(self.num_pages - 1, -1, -1))  # pop() hands out page 0 first
        self._tables: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._next_id = 0

    # -- sequences -------------------------------------------------------------------------------------
    def add_sequence(self) -> int:
        seq = self._next_id
        self._next_id += 1
        self._tables[seq], self._lengths[seq] = [], 0
        return seq

    def _check_seq(self, seq) -> int:
        if seq not in self._tables:
            raise KeyError(f"no sequence {seq!r} in this cache (live: {sorted(self._tables)})")
        return seq

    def append(self, seq: int, k, v) -> None:
        self._check_seq(seq)
        _check_kv(k, v, self.kv_heads, self.head_dim, self.dtype, "[Hkv, L, D]", 3)
        L, start = k.shape[1], self._lengths[seq]
        need = -(-(start + L) // self.page_size) - len(self._tables[seq])
        if need > len(self._free):
            raise MemoryError(f"sequence {seq} needs {need} more pages of {self.page_size} tokens, but only "
                              f"{len(self._free)} are free ({self.pages_in_use} of {self.num_pages} in use); "
                              "nothing was written: free a sequence or make a larger cache")
        table = self._tables[seq]
        table.extend(self._free.pop() for _ in range(need))
        for t in range(L):
            j = start + t
            page, slot = table[j // self.page_size], j % self.page_size
            self.k[:, page, slot] = k[:, t]
            self.v[:, page, slot] = v[:, t]
        self._lengths[seq] = start + L

    def free(self, seq: int) -> None:
        self._check_seq(seq)
        self._free.extend(reversed(self._tables.pop(seq)))
        del self._lengths[seq]

    def length(self, seq: int) -> int:
        return self._lengths[self._check_seq(seq)]

    def block_table(self, seq: int) -> np.ndarray:
        return np.asarray(self._tables[self._check_seq(seq)], np.int32)

    @property
    def sequences(self) -> list[int]:
        return list(self._tables)

    # -- accounting ------------------------------------------------------------------------------------
    @property
    def pages_in_use(self) -> int:
        return self.num_pages - len(self._free)

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def fragmentation(self) -> float:
        """Internal fragmentation: empty slots in pages in use, as a share of those pages' slots."""
        slots = self.pages_in_use * self.page_size
        return 0.0 if slots == 0 else 1.0 - sum(self._lengths.values()) / slots

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    # -- for the kernels and the checks ----------------------------------------------------------------
    def tables(self, seq_ids) -> tuple[np.ndarray, np.ndarray]:
        """``(block_table [B, max_pages] int32 (padded with -1), lengths [B] int64)`` for these sequences."""
        seq_ids = [self._check_seq(s) for s in seq_ids]
        width = max([len(self._tables[s]) for s in seq_ids] + [1])
        table = np.full((len(seq_ids), width), -1, np.int32)
        for row, s in enumerate(seq_ids):
            table[row, : len(self._tables[s])] = self._tables[s]
        return table, np.array([self._lengths[s] for s in seq_ids], np.int64)

    def gather(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """A copy of sequence ``seq``'s keys and values, ``[Hkv, length, D]`` each (for checks and the reference)."""
        table, n = self._tables[self._check_seq(seq)], self._lengths[seq]
        if not table:
            empty = np.zeros((self.kv_heads, 0, self.head_dim), self.dtype)
            return empty, empty.copy()
        k = self.k[:, table].reshape(self.kv_heads, -1, self.head_dim)[:, :n]
        v = self.v[:, table].reshape(self.kv_heads, -1, self.head_dim)[:, :n]
        return k, v

    def __repr__(self) -> str:
        return (f"PagedKVCache({self.num_pages} pages of {self.page_size} tokens, kv_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}, dtype={self.dtype}: {len(self._tables)} sequences, "
                f"{self.pages_in_use} pages in use, fragmentation {self.fragmentation:.1%})")
