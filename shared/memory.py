"""After a bundle load: give freed memory back to the operating system, and keep what was loaded
out of the garbage collector's full passes.

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


def freeze_loaded(collect: bool = False) -> None:
    """Move every object alive now (the loaded bundle, models, catalogue, imported modules) out
    of the collector's view, for good: it lives until the next reload. A full pass walks every
    tracked object, and with these in view each one stalled a server for 13-76 ms on
    MicroLens-50k (retrieval's 155k objects: 45 ms a pass, 8 passes in a 90 s bench run); the
    stall holds every request in flight and in the socket (bench/results/overload.json).

    `collect` first collects what is already garbage (start-up, before requests: the pause
    costs nobody). After a reload it is left off: freezing alone is O(1), and the previous
    bundle's objects are still freed by reference counting once the last request holding them
    ends; only reference cycles among them would stay, and a state holds few.
    """
    if collect:
        gc.collect()
    gc.freeze()
