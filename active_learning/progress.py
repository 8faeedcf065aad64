"""Progress for long work: a bar on a terminal, plain log lines otherwise (log files, servers, CI).

A bar's carriage-return updates would fill a log file with thousands of partial lines, so when stderr is not a
terminal ``progress`` logs one line every ``every`` items and one at the end instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, Sized, TypeVar

T = TypeVar("T")
log = logging.getLogger("groundloop.progress")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(items: Iterable[T], what: str, unit: str, every: int = 50, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, showing how far along they are (of ``total``, or ``len(items)``)."""
    total = len(items) if total is None and isinstance(items, Sized) else total
    if on_terminal():
        from tqdm import tqdm

        yield from tqdm(items, desc=what, unit=unit, total=total)
        return
    done = 0
    for done, item in enumerate(items, 1):
        yield item
        if done % every == 0 and done != total:
            log.info("%s: %d%s %ss", what, done, f"/{total}" if total else "", unit)
    log.info("%s: %d %ss done", what, done, unit)
