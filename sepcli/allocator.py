"""Keep freed tensor memory in the process instead of handing it back to the kernel.

glibc serves every block over 32 MB with a fresh mmap and unmaps it on free. A CPU training step
allocates and frees hundreds of such activations, so each step page-faults all of them back in,
4 kB at a time: on two cores that was about 40 % of a Mel-RoFormer training step. Turning mmap off
and never trimming the heap (-1, as `man mallopt` documents; a finite threshold is an int and still
trims heaps of several GB) makes freed blocks reusable, at the price of keeping the peak memory,
plus some fragmentation, until the process ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # mallopt option numbers, from glibc's malloc.h
M_MMAP_MAX = -4
NEVER_TRIM = -1


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory; True if it took effect (Linux with glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
