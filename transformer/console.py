"""The one output channel: every message goes through ``logging`` (the ``transformer`` logger and its children),
configured once by the command line; long loops (training, translating a file, evaluation) show a tqdm progress
bar on a terminal and a few plain lines otherwise (a log file, a pipe, a job scheduler's output).

Results (JSON, translations, samples) go to standard output; everything else goes here, to standard error.
Library users who never call ``configure`` see warnings only, as with any library that logs.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

log = logging.getLogger("transformer")


class _StderrHandler(logging.Handler):
    """Writes to ``sys.stderr`` as it is at each message (a redirection after import is honoured); on a terminal
    through ``tqdm.write`` so a message never tears a progress bar."""

    def emit(self, record):
        try:
            text = self.format(record)
            stream = sys.stderr
            if _is_terminal(stream):
                from tqdm import tqdm

                tqdm.write(text, file=stream)
            else:
                stream.write(text + "\n")
                stream.flush()
        except Exception:  # a logging handler must never raise into the program
            self.handleError(record)


class _Format(logging.Formatter):
    def format(self, record):
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def _show_warning(message, category, filename, lineno, file=None, line=None):
    log.warning(str(message))  # a Python warning, said like every other message (no source line)


def configure(level=logging.INFO) -> None:
    """Route the package's messages, and Python warnings, to standard error (called once, by the command line)."""
    warnings.showwarning = _show_warning
    for handler in list(log.handlers):
        if isinstance(handler, _StderrHandler):
            log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_Format())
    log.addHandler(handler)
    log.setLevel(level)


def _is_terminal(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


class Progress:
    """Progress of a long loop: a tqdm bar on a terminal; otherwise a plain line every ``every`` updates (and at the
    first and last), so a log file shows the run without thousands of lines.

    ``update(n, **fields)`` advances by ``n`` and shows ``fields`` (e.g. loss, lr); ``close()`` ends it.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        every: int = 1,
        initial: int = 0,
        unit: str = "it",
        leave: bool = True,
        timed: bool = False,
    ):
        self.desc, self.total, self.every, self.count = desc, total, max(int(every), 1), int(initial)
        self.start, self.timed = time.perf_counter(), timed
        self.bar = None
        if _is_terminal(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=sys.stderr)

    def update(self, n: int = 1, **fields) -> None:
        self.count += n
        if self.bar is not None:
            if fields:
                self.bar.set_postfix(fields, refresh=False)
            self.bar.update(n)
        elif self.count % self.every == 0 or self.count == 1 or self.count == self.total:
            total = f"/{self.total}" if self.total else ""
            fields = {**fields, "elapsed": clock(time.perf_counter() - self.start)} if self.timed else fields
            log.info(" | ".join([f"{self.desc} {self.count}{total}", *(f"{k} {v}" for k, v in fields.items())]))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def track(iterable, desc: str, total: int | None = None, unit: str = "batch"):
    """``iterable`` with a progress bar on a terminal (left behind only while it runs); on a plain stream, a line
    at the start and one about every tenth of the way, with the elapsed time."""
    total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
    every = max((total or 0) // 10, 1) if total else 1_000_000
    with Progress(desc, total=total, every=every, unit=unit, leave=False, timed=True) as progress:
        for item in iterable:
            yield item
            progress.update(1)


def clock(seconds: float) -> str:
    """h:mm:ss"""
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
