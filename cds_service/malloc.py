"""glibc malloc tuning for the gunicorn workers (set in the master, inherited on fork).

Why: a request allocates and frees about a megabyte. With glibc's defaults the top
of the heap can be handed back to the kernel after each request and faulted in
again by the next one: measured on the 300-resource benchmark request, 240 page
faults and +0.4-0.8 ms CPU per request (benchmarks/RESULTS.md). Keeping 16 MiB of
padding at the heap top stops that churn; untouched padding costs no memory."""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TOP_PAD = -2  # glibc <malloc.h>
TOP_PAD_BYTES = 16 * 1024 * 1024


def pad_heap_top() -> bool:
    """Set M_TOP_PAD unless the operator set MALLOC_TOP_PAD_; False where there is no glibc."""
    if "MALLOC_TOP_PAD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TOP_PAD, TOP_PAD_BYTES))
