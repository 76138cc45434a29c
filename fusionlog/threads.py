"""torch's intra-op thread count, set for a block of work and given back after it.

Why scoped: the count is process-wide. The small model trains and scores fastest on one thread (its steps are
too small to split), but `fuse` runs the LLM in the same process after training, and a count set once and left
there ran every LLM call on one of the machine's cores (stop 31: 1.61 s a call on one thread, 1.26 s on two).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads, then restore the previous count (None or 0: leave as is).

    The setting is process-wide: callers that score from several threads do so under one lock (as serving does).
    """
    before = torch.get_num_threads()
    if not n or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
