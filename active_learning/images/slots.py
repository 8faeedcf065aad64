"""How many decoded images a process holds at once: a decoded task image may be 300 MB."""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Iterator

from active_learning.settings import Settings


class ImageSlots:
    """A process-wide bound on decoded images held at once, shared by every caller.

    A caller that holds no slot waits for one; a caller that holds some only takes another when one is free, so
    two callers never wait on each other while each holds images the other needs.
    """

    def __init__(self, limit: int):
        self._free = threading.BoundedSemaphore(limit)

    def take(self, waiting: bool) -> bool:
        return self._free.acquire(blocking=waiting)

    def give(self) -> None:
        self._free.release()

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        """Hold one slot (waiting for it) while the block runs."""
        self.take(waiting=True)
        try:
            yield
        finally:
            self.give()


def image_slots(settings: Settings) -> ImageSlots:
    """The slots of this process: one detect() batch and the images fetched ahead of it
    (``predict_batch_size + prefetch_images``)."""
    return _slots(max(1, settings.predict_batch_size) + max(0, settings.prefetch_images))


@functools.cache
def _slots(limit: int) -> ImageSlots:
    return ImageSlots(limit)
