"""chordlab: a workbench for understanding, measuring and tuning FlashAttention-style kernels.

The kernel progression, one idea per step (each module's header says what it adds):

    step1_reference       the O(N²) textbook passes (the ground truth)
    step2_online_softmax  streaming softmax and the merge of partial (max, sum) states
    step3_tiled           FlashAttention forward in NumPy, O(N) memory
    step4_simd            the same in C: SIMD micro-kernels per ISA, runtime dispatch, threads
    step5_cuda            CUDA kernels v1-v4 (PyCUDA on a GPU; v1-v3 also on the CPU through PoCL)
    step8_webgpu          WGSL kernels w1-w3 through wgpu-py, on any GPU (or lavapipe on the CPU)
    variants              sliding window, ALiBi, softcap and block-sparse masks (chapter 11)
    kv_cache, decoding    KV caches (contiguous, paged) and `decode` with split-KV (chapter 10)

Every step is a backend of one function, `attention(q, k, v, ..., backend=...)`; `backends()` lists them.
"""

from . import step1_reference, step3_tiled, step4_simd, step5_cuda, step8_webgpu  # noqa: F401  (registers them)
from .api import attention, attention_backward, choose_backend, explain_auto
from .backends import Backend, BackendError, backends, get_backend, register
from .decoding import decode
from .exercises import check
from .kv_cache import KVCache, PagedKVCache
from .layers import MultiHeadAttention
from .memory import (
    MemoryBudgetError,
    format_bytes,
    get_memory_limit,
    measure_peak,
    memory_limit,
    predict_memory,
    set_memory_limit,
)
from .solutions import solution
from .step2_online_softmax import SoftmaxState, merge_states, online_softmax, softmax_naive, softmax_safe
from .validation import AttentionProblem, ProblemShape, prepare
from .variants import BlockMask, alibi_slopes, block_mask

__version__ = "0.1.0"

__all__ = [
    "attention", "attention_backward", "backends", "get_backend", "register", "Backend", "BackendError",
    "choose_backend", "explain_auto",
    "online_softmax", "softmax_naive", "softmax_safe", "SoftmaxState", "merge_states",
    "MultiHeadAttention", "check", "solution", "prepare", "AttentionProblem", "ProblemShape",
    "MemoryBudgetError", "memory_limit", "set_memory_limit", "get_memory_limit", "predict_memory",
    "measure_peak", "format_bytes", "block_mask", "BlockMask", "alibi_slopes",
    "decode", "KVCache", "PagedKVCache", "__version__",
]
