"""Many images through the detector: fetched and decoded ahead of it, detected in batches, answered one by one.

``predict_batched`` is the throughput half of the prediction path (``predict`` is the other half: one batch of
decoded images -> Label Studio regions). For each item it yields one ``BatchOutcome``: the prediction, or the
one-line reason there is none, or "over budget" once ``deadline`` has passed. The rules:

- Fetching and decoding (``load``) run in a small thread pool ahead of the model (``prefetch`` images), so the
  next image's download and decode overlap this image's forward pass.
- Up to ``batch_size`` loaded images go to ``predict_images`` at once; the detector batches those of the same
  input shape into one forward (a GPU gets batches; on a CPU one image per forward is as fast).
- One bad item costs only itself: a load error is its own outcome, and when a batch fails the images are
  predicted again one at a time, so only the failing one reports the failure.
- A process holds at most ``batch_size + prefetch`` decoded images (``images.slots``), whatever number of
  requests run at once: a decoded image may be 300 MB.
- With a ``deadline``, no batch starts once it has passed, and a batch is cut to the images that the measured
  seconds per image say still fit (always at least one).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Iterator, Sequence, TypeVar

from active_learning.images import FetchedImage, ImageError
from active_learning.images.fetcher import short_url
from active_learning.images.slots import ImageSlots, image_slots
from active_learning.serving.jobs import Job
from active_learning.serving.predict import ImagePrediction, predict_images
from active_learning.serving.shared_models import ModelUnavailable
from active_learning.settings import Settings

if TYPE_CHECKING:
    from model import Detector

log = logging.getLogger(__name__)

Item = TypeVar("Item")


@dataclass(frozen=True)
class BatchOutcome(Generic[Item]):
    item: Item
    fetched: FetchedImage | None = None
    """The decoded image (while the outcome is being handled; the next one may replace it)."""
    prediction: ImagePrediction | None = None
    error: str | None = None
    """Why there is no prediction (a one-line message), unless ``over_budget``."""
    over_budget: bool = False


def predict_batched(detector: "Detector", job: Job, items: Sequence[Item],
                    load: Callable[[Item], FetchedImage], settings: Settings,
                    deadline: float | None = None) -> Iterator[BatchOutcome[Item]]:
    """One outcome per item of ``items``, in order. ``load`` fetches and decodes an item's image, raising
    ``ImageError`` with a message fit to show; ``settings.predict_batch_size`` and ``settings.prefetch_images``
    set the batch and how far ahead images load; ``deadline`` is a ``time.monotonic()`` time."""
    batch_size, prefetch = max(1, settings.predict_batch_size), max(0, settings.prefetch_images)
    slots = image_slots(settings)
    waiting = deque(items)
    loading: deque[tuple[Item, Future]] = deque()
    seconds_per_image: float | None = None
    pool = ThreadPoolExecutor(max_workers=max(1, prefetch), thread_name_prefix="image-fetch")
    try:
        while waiting or loading:
            if deadline is not None and time.monotonic() >= deadline:
                break
            while waiting and len(loading) < batch_size + prefetch and slots.take(waiting=not loading):
                item = waiting.popleft()
                loading.append((item, pool.submit(load, item)))
            taken = _take_loaded(loading, _batch_limit(batch_size, deadline, seconds_per_image))
            try:
                loaded = [outcome for outcome in taken if outcome.error is None]
                started = time.monotonic()
                predicted = iter(_predict(detector, job, loaded))
                if loaded:
                    seconds_per_image = (time.monotonic() - started) / len(loaded)
                for outcome in taken:
                    yield outcome if outcome.error is not None else next(predicted)
            finally:
                for _ in taken:
                    slots.give()
        while loading:
            item, future = loading.popleft()
            _give_when_done(future, slots)
            yield BatchOutcome(item, over_budget=True)
        yield from (BatchOutcome(item, over_budget=True) for item in waiting)
    finally:
        while loading:  # the caller stopped early: give back what is still held
            _give_when_done(loading.popleft()[1], slots)
        pool.shutdown(wait=False, cancel_futures=True)


def _give_when_done(future: Future, slots: ImageSlots) -> None:
    """Cancel a fetch not started yet; one under way gives its slot back when it ends."""
    future.cancel()
    future.add_done_callback(lambda _: slots.give())


def _batch_limit(batch_size: int, deadline: float | None, seconds_per_image: float | None) -> int:
    """``batch_size``, cut to the images that still fit before ``deadline`` at the measured pace."""
    if deadline is None or not seconds_per_image:
        return batch_size
    fits = int((deadline - time.monotonic()) / seconds_per_image)
    return max(1, min(batch_size, fits))


def _take_loaded(loading: deque, limit: int) -> list[BatchOutcome]:
    """Items from the front of ``loading`` (waiting for their images, in order) until ``limit`` images are loaded;
    those whose image failed to load come with their error."""
    taken, loaded = [], 0
    while loading and loaded < limit:
        item, future = loading.popleft()
        try:
            taken.append(BatchOutcome(item, fetched=future.result()))
            loaded += 1
        except ImageError as exc:
            taken.append(BatchOutcome(item, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported as this item's failure
            log.exception("loading an image failed")
            taken.append(BatchOutcome(item, error=f"the image could not be loaded: {type(exc).__name__}"))
    return taken


def _predict(detector: "Detector", job: Job, batch: list[BatchOutcome]) -> list[BatchOutcome]:
    """The batch's predictions; when the batch fails, each image alone, so the failure stays with its image."""
    if not batch:
        return []
    try:
        predictions = predict_images(detector, [outcome.fetched.image for outcome in batch], job)
    except ModelUnavailable as exc:
        return [BatchOutcome(outcome.item, outcome.fetched, error=str(exc)) for outcome in batch]
    except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported as the image's failure
        if len(batch) > 1:
            log.warning("a batch of %d images failed (%s); predicting them one at a time", len(batch),
                        type(exc).__name__)
            return [result for outcome in batch for result in _predict(detector, job, [outcome])]
        url = short_url(batch[0].fetched.url)
        log.exception("detection failed on %s", url)
        return [BatchOutcome(batch[0].item, batch[0].fetched, error=f"detection failed on {url}: "
                                                                    f"{type(exc).__name__}")]
    return [BatchOutcome(outcome.item, outcome.fetched, prediction=prediction)
            for outcome, prediction in zip(batch, predictions)]
