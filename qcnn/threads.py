"""BLAS thread control.  Inference is single-threaded unless asked otherwise: that is how the
paper measures, and it keeps dense and quantized engines comparable on a shared machine."""
from __future__ import annotations

from threadpoolctl import threadpool_limits

_threads: int | None = None
_applied: int | None = None


def set_num_threads(n: int) -> None:
    """Threads for BLAS (and, later, the C kernels); takes effect on the next forward pass."""
    global _threads
    if n < 1:
        raise ValueError("thread count must be at least 1")
    _threads = n


def num_threads() -> int:
    return _threads or 1


def ensure_thread_limit() -> None:
    # threadpoolctl enumerates loaded libraries on every call: do it only when the setting changed.
    global _applied
    if _applied != num_threads():
        threadpool_limits(limits=num_threads(), user_api="blas")
        _applied = num_threads()
