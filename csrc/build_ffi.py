"""cffi (API mode) build of the SIMD kernels: ``chordlab._simd``.

Used by setup.py (``cffi_modules``, so ``pip install -e .`` builds it) and by
`chordlab.step4_simd.build_library`, which compiles an edited copy under a fresh module name from a notebook.
The C declarations come from chordlab_simd.h itself (preprocessor lines dropped), so they cannot drift.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cffi import FFI

CSRC = Path(__file__).resolve().parent
SOURCES = ["dispatch.c", "isa_scalar.c", "isa_avx2.c", "isa_avx512.c", "isa_avx512bf16.c", "isa_neon.c",
           "isa_neonbf16.c"]
COMPILE_ARGS = ["-O3", "-std=gnu11", "-pthread", "-Wall", "-Wno-unknown-pragmas"]

# Python-side helpers compiled into the module: report scratch allocations to tracemalloc.
PREAMBLE = r"""
#include "chordlab_simd.h"
#define CL_TRACEMALLOC_DOMAIN 0x43484c42u /* 'CHLB' */
/* not in the limited API headers (abi3 builds), but exported by every CPython >= 3.6 */
int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size);
int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr);
static void cl_tracemalloc_hook(void *ptr, size_t size, int is_free) {
    if (is_free) PyTraceMalloc_Untrack(CL_TRACEMALLOC_DOMAIN, (uintptr_t)ptr);
    else PyTraceMalloc_Track(CL_TRACEMALLOC_DOMAIN, (uintptr_t)ptr, size);
}
static void cl_install_tracemalloc_hook(void) { cl_set_alloc_hook(cl_tracemalloc_hook); }
"""


def cdef_from_header(header: Path) -> str:
    """The header's declarations for cffi: '#define NAME <int>' kept, other preprocessor lines dropped."""
    lines = []
    for line in header.read_text().splitlines():
        if line.startswith("#"):
            if re.match(r"#define\s+CL_\w+\s+-?\d+", line):
                lines.append(re.sub(r"/\*.*\*/", "", line).rstrip())
            continue
        lines.append(line)
    return "\n".join(lines) + "\nvoid cl_install_tracemalloc_hook(void);\n"


def make_ffi(module_name: str = "chordlab._simd", csrc: Path = CSRC) -> FFI:
    ffi = FFI()
    ffi.cdef(cdef_from_header(csrc / "chordlab_simd.h"))
    ffi.set_source(
        module_name,
        PREAMBLE,
        sources=[str(csrc / s) if os.path.isabs(csrc) else os.path.join(str(csrc), s) for s in SOURCES],
        include_dirs=[str(csrc)],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=["-pthread"] if sys.platform != "win32" else [],
    )
    return ffi


# setup.py's cffi_modules wants relative source paths
ffibuilder = make_ffi(csrc=Path(os.path.relpath(CSRC, Path.cwd())) if CSRC.is_relative_to(Path.cwd()) else CSRC)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
