"""Memory growth of a block of code, for the leak tests.

tracemalloc sees Python objects; RSS sees what C code (hiredis) mallocs.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Growth:
    python: int = 0   # bytes of Python allocations (tracemalloc)
    rss: int = 0      # bytes of resident memory


@contextmanager
def memory_growth() -> Iterator[Growth]:
    """``with memory_growth() as grown: ...``; then ``grown.python``/``grown.rss``.

    Warm up before entering: the first rounds fill caches and free lists.
    """
    growth = Growth()
    gc.collect()
    tracemalloc.start()
    try:
        before_py, before_rss = tracemalloc.get_traced_memory()[0], rss_bytes()
        yield growth
        gc.collect()
        growth.python = tracemalloc.get_traced_memory()[0] - before_py
        growth.rss = rss_bytes() - before_rss
    finally:
        tracemalloc.stop()
