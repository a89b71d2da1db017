"""Give memory that Python has freed back to the operating system after a bundle load.

A load leaves transients behind (the items.json text, each item decoded on the way, the
vectors normalised block by block) and a reload frees the previous bundle's state; glibc's
allocator keeps freed pages mapped where long-lived objects sit between them, so the process
would stay near its loading peak. `malloc_trim(0)`
returns every free page inside the heap to the kernel (glibc >= 2.8). No maintained Python
library wraps this one libc call, hence ctypes; it is a no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)


def return_freed_memory() -> bool:
    """Collect garbage, then hand free heap pages back to the kernel; False where unsupported."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        trim = None
    if trim is None:
        log.debug("malloc_trim unavailable: freed memory stays with the process")
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
