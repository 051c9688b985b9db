"""Back-translation (Sennrich et al. 2016): a reverse model translates target-language monolingual text into
synthetic sources; the pairs (synthetic source, real target) then train the forward model beside the real pairs
(``data.train_corpora``, transformer/mixing.py). The command is ``python -m transformer backtranslate``.

The output is a TSV with one line per input line, in order: ``synthetic source<TAB>monolingual sentence``, the
columns a training corpus entry reads by default. Decoding is ``translate_sentences``, the code ``translate`` and
``distill`` use: beam search (``beam=1``: greedy), or sampling (Edunov et al. 2018: ``sample``, optionally from the
``top_k`` best tokens), and beam output can be noised (``noise``: words deleted, blanked and locally shuffled, as
Edunov et al.'s "beam+noise").

Streaming and restartable: the input goes through in chunks; each chunk's lines are appended with one write and
flushed to the disk, so the file only ever ends inside a line after a crash in that write. A restart with
``resume`` drops such a partial last line, checks that every complete line's second column is the input line it
should be (so the file is this input's output), and continues after it; the random draws of a chunk depend only on
``(seed, index of its first line)``, so a run resumed at a chunk boundary writes what an uninterrupted one would.
How the lines were made (the reverse model, the decoding options) is recorded beside the output in
``OUTPUT.settings.json``; a resume with other settings is refused, so one file never mixes two decodings.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .console import log
from .data import _format_lines
from .datasets import decode_lines
from .files import fsync_path, write_atomic
from .tasks import translate_sentences

FILLER = "<blank>"
REASON_UTF8, REASON_EMPTY, REASON_TAB = "invalid UTF-8", "empty or whitespace-only", "holds a tab"


class BacktranslationError(ValueError):
    """Bad input to back-translation (the message names the file, lines and what to do)."""


def check_direction(found: tuple[str, str], direction: str, where: str) -> None:
    """``direction`` ("en-de") must be the reverse model's (source, target) languages ``found``."""
    wanted = tuple(direction.split("-"))
    if len(wanted) != 2 or not all(wanted):
        raise BacktranslationError(f"--direction {direction!r} must look like SRC-TGT, e.g. en-de")
    if tuple(found) != wanted:
        raise BacktranslationError(
            f"{where} translates {found[0]}->{found[1]}, not {wanted[0]}->{wanted[1]} (--direction {direction}): "
            f"back-translation for a {wanted[1]}->{wanted[0]} model needs a {wanted[0]}->{wanted[1]} reverse model"
        )


def read_monolingual(data: bytes, name: str, skip_bad: bool = False) -> tuple[list[str], list[int]]:
    """(sentences, their 1-based lines): every line stripped; lines that are not valid UTF-8, empty or hold a tab
    (it would break the TSV) are refused with their line numbers, or with ``skip_bad`` skipped and reported."""
    bad: dict[str, list[int]] = {}
    sentences, lines = [], []
    for number, line in enumerate(decode_lines(data, name, on_bad="filter"), start=1):
        text = None if line is None else line.strip()
        if text is None or not text or "\t" in text:
            reason = REASON_UTF8 if text is None else REASON_EMPTY if not text else REASON_TAB
            bad.setdefault(reason, []).append(number)
            continue
        sentences.append(text)
        lines.append(number)
    if bad:
        details = "; ".join(f"{reason}: {len(where)} ({_format_lines(where, 5)})" for reason, where in bad.items())
        if not skip_bad:
            raise BacktranslationError(
                f"{name}: {sum(map(len, bad.values()))} line(s) cannot be back-translated: {details}; fix them, or "
                "pass --skip-bad to leave them out (the output then has one line per good input line)"
            )
        log.warning(f"{name}: skipped {details}")
    if not sentences:
        raise BacktranslationError(f"{name}: no sentence to back-translate")
    return sentences, lines


def noise_words(text: str, rng: np.random.Generator, drop: float = 0.1, blank: float = 0.1, shuffle: int = 3) -> str:
    """Edunov et al. (2018)'s noise on a synthetic source: each word deleted with probability ``drop``, replaced by
    a filler with probability ``blank``, and the words shuffled by sorting positions ``i + U(0, shuffle)``
    (Lample et al. 2018: no word moves more than ``shuffle - 1`` places). One word is never deleted."""
    words = text.split()
    if not words:
        return text
    u = rng.random(len(words))
    keep = [FILLER if x < blank else w for x, w in zip(u, words) if not blank <= x < blank + drop] or words[:1]
    order = np.argsort(np.arange(len(keep)) + rng.uniform(0, shuffle, len(keep)), kind="stable")
    return " ".join(keep[i] for i in order)


def completed_lines(output: Path, sentences: Sequence[str]) -> int:
    """How many lines of an interrupted ``output`` are complete and belong to ``sentences`` (a partial last line
    is cut off the file); refuses a file that is not this input's output."""
    data = output.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(output, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
        log.warning(f"{output}: dropped an incomplete last line ({len(data) - end} bytes) left by an interruption")
    done = data[:end].decode("utf-8", errors="replace").split("\n")[:-1]
    if len(done) > len(sentences):
        raise BacktranslationError(
            f"{output} has {len(done)} lines, more than the {len(sentences)} input sentences: it is not this "
            "input's output (--overwrite replaces it)"
        )
    for i, line in enumerate(done):
        columns = line.split("\t")
        if len(columns) != 2 or columns[1] != sentences[i]:
            raise BacktranslationError(
                f"{output} line {i + 1} is not the back-translation of input sentence {i + 1} ({sentences[i]!r}): "
                "the file is another input's output (--overwrite replaces it)"
            )
    return len(done)


def settings_path(output: Path) -> Path:
    """Where the decoding settings of ``output`` are recorded: ``OUTPUT.settings.json`` beside it."""
    return output.with_name(output.name + ".settings.json")


def check_same_settings(output: Path, settings: dict) -> None:
    """A resumed ``output`` must continue with the settings it was started with (its record beside it); an output
    without a record (written before records existed) is continued, with a warning, and gets one."""
    path = settings_path(output)
    if not path.exists():
        log.warning(f"{output}: no record of how it was decoded ({path.name}); continuing with the settings given now")
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BacktranslationError(f"{path} cannot be read ({error}); --overwrite starts the output afresh") from None
    changed = sorted(key for key in set(recorded) | set(settings) if recorded.get(key) != settings.get(key))
    if changed:
        details = ", ".join(f"{key} {recorded.get(key)!r} -> {settings.get(key)!r}" for key in changed)
        raise BacktranslationError(
            f"{output} was started with other settings ({details}; recorded in {path.name}): a resume must decode "
            "the rest the same way; give the recorded settings, or --overwrite to start afresh"
        )


def append_lines(output: Path, lines: Sequence[str]) -> None:
    """Append complete lines with one write, flushed to the disk before the next chunk starts."""
    with open(output, "ab") as handle:
        handle.write("".join(line + "\n" for line in lines).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def backtranslate(
    model,
    src_tok,
    tgt_tok,
    sentences: Sequence[str],
    output: str | os.PathLike,
    *,
    resume: bool = False,
    beam: int = 5,
    alpha: float = 0.6,
    max_tokens: int = 8000,
    sample: bool = False,
    top_k: int | None = None,
    noise: bool = False,
    seed: int = 0,
    chunk: int = 1000,
    no_repeat_ngram_size: int = 0,
    identity: dict | None = None,
) -> dict:
    """Write the TSV of (synthetic source, sentence) for every sentence into ``output``; with ``resume`` continue an
    interrupted output. ``identity`` (say, the reverse model's checkpoint and direction) is recorded with the decoding
    options in ``OUTPUT.settings.json``. Returns a summary (lines written now and in all, seconds, sentences per
    second)."""
    output = Path(output)
    settings = {
        **(identity or {}),
        "beam": 1 if sample else int(beam),
        "alpha": float(alpha),
        "sample": bool(sample),
        "top_k": top_k if sample else None,
        "noise": bool(noise),
        "no_repeat_ngram_size": int(no_repeat_ngram_size),
        # the random draws of a chunk follow from (seed, its first line): they matter only when something is drawn
        "seed": int(seed) if sample or noise else None,
        "chunk": int(chunk) if sample or noise else None,
    }
    if resume and output.exists():
        check_same_settings(output, settings)
    start = completed_lines(output, sentences) if resume and output.exists() else 0
    if not resume or not output.exists():
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(b"")
        fsync_path(output.parent, directory=True)
    write_atomic(settings_path(output), json.dumps(settings, indent=1) + "\n")
    if start:
        log.info(f"{output}: {start} of {len(sentences)} lines already written; continuing after them")
    began = time.perf_counter()
    for first in range(start, len(sentences), chunk):
        texts = list(sentences[first : first + chunk])
        rng = np.random.default_rng([int(seed), first])
        hyps = translate_sentences(
            model,
            src_tok,
            tgt_tok,
            texts,
            beam=1 if sample else beam,
            alpha=alpha,
            max_tokens=max_tokens,
            rng=rng if sample else None,
            top_k=top_k,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        hyps = [" ".join(h.split()) for h in hyps]  # no tab or newline may break the TSV
        if noise:
            hyps = [noise_words(h, rng) for h in hyps]
        append_lines(output, [f"{h}\t{t}" for h, t in zip(hyps, texts)])
        done, seconds = first + len(texts), time.perf_counter() - began
        rate = (done - start) / max(seconds, 1e-9)
        log.info(
            f"back-translated {done}/{len(sentences)} lines ({rate:.1f} sentences/s, "
            f"{(len(sentences) - done) / max(rate, 1e-9):.0f} s to go)"
        )
    seconds = time.perf_counter() - began
    return {
        "lines": len(sentences),
        "written_now": len(sentences) - start,
        "resumed_after": start,
        "seconds": round(seconds, 3),
        "output": str(output),
    }
