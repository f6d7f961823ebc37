"""Blocks that a stop signal must not cut in two.

A training step changes the weights, Adam's moments, the counters, the loss sums and the RNG state
that a checkpoint stores together; a stop signal (`bench run` turns SIGINT and SIGTERM into
KeyboardInterrupt, which checkpoints) landing between two of those changes would save a state that
no uninterrupted run passes through. ``uninterrupted()`` holds the stop signals for the block and
delivers them, to the handlers in place before it, as it ends.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Run the block whole: SIGINT and SIGTERM arriving inside it are delivered once it ends (or
    raises), in the order they came, to the handlers that were in place. Blocks nest. Off the main
    thread, where Python delivers no signals, it does nothing; a handler installed outside Python
    (``signal.getsignal`` gives None) is left alone, as it could not be put back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    previous = {s: h for s, h in previous.items() if h is not None}
    for s in previous:
        signal.signal(s, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)
