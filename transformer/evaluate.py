"""Measuring translations and language models the way the field does.

- ``bleu`` / ``chrf``: sacreBLEU's corpus scores on *detokenised* hypotheses against the *raw* references (defaults:
  BLEU with the 13a tokenizer, cased; chrF with character order 6, beta 2). Each returns ``(score, signature)``; the
  signature (e.g. ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``) must be printed with the score,
  otherwise numbers from different settings get compared. Hypotheses still in SentencePiece pieces (``▁``) are
  refused: scoring pieces inflates BLEU and is a classic mistake.
- ``perplexity(total_loss, total_tokens)``: ``exp(total_loss / total_tokens)`` from summed per-token cross-entropies
  (natural log), the loss the model computes; ``bits_per_token`` is the same mean in base 2.
- Human evaluation: ``write_human_eval_sheet`` writes a CSV with columns ``id, source, reference, hypothesis,
  adequacy, fluency`` (the last two empty, to be scored 1-5), rows shuffled with a seed so raters do not see corpus
  order, ``id`` being the sentence's 0-based position in the test set so the scores can be mapped back.
  ``summarise_sheet`` reads a filled sheet and reports means and counts; ``python -m transformer sheet-summary
  SHEET.csv`` prints them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .files import write_atomic

SHEET_COLUMNS = ("id", "source", "reference", "hypothesis", "adequacy", "fluency")
SCORE_COLUMNS = ("adequacy", "fluency")
SCORE_RANGE = (1, 5)
SENTENCEPIECE_SPACE = "\u2581"


class Score(NamedTuple):
    score: float
    signature: str


class SheetError(ValueError):
    """A human-evaluation sheet is missing columns or holds a bad score (the message names the row)."""


def _check_corpus(hyps: Sequence[str], refs, metric: str) -> list[list[str]]:
    """Validate inputs; returns the references as a list of reference streams (sacreBLEU's layout)."""
    if isinstance(hyps, str):
        raise TypeError(f"{metric}: hyps must be a list of strings, got one string")
    hyps = list(hyps)
    if isinstance(refs, str):
        raise TypeError(f"{metric}: refs must be a list of strings (or a list of reference lists), got one string")
    refs = list(refs)
    streams = [list(stream) for stream in refs] if refs and not isinstance(refs[0], str) else [refs]
    for number, stream in enumerate(streams):
        if len(stream) != len(hyps):
            raise ValueError(f"{metric}: {len(hyps)} hypotheses but reference set {number} has {len(stream)} lines")
    for index, hyp in enumerate(hyps):
        if not isinstance(hyp, str):
            raise TypeError(f"{metric}: hypothesis {index} is {type(hyp).__name__}, not a detokenised string")
        if SENTENCEPIECE_SPACE in hyp:
            raise ValueError(
                f"{metric}: hypothesis {index} contains SentencePiece pieces ('\u2581'): {hyp[:80]!r}; "
                f"score detokenised text (tokenizer.decode), not pieces"
            )
    if not hyps:
        raise ValueError(f"{metric}: no hypotheses to score")
    return streams


def bleu(hyps: Sequence[str], refs, **options) -> Score:
    """Corpus BLEU of detokenised ``hyps`` against raw ``refs`` (a list of strings, or a list of reference lists).

    ``options`` go to ``sacrebleu.metrics.BLEU`` (e.g. ``tokenize="intl"``, ``lowercase=True``); the signature
    records them.
    """
    from sacrebleu.metrics import BLEU

    streams = _check_corpus(hyps, refs, "bleu")
    metric = BLEU(**options)
    result = metric.corpus_score(list(hyps), streams)
    return Score(float(result.score), str(metric.get_signature()))


def chrf(hyps: Sequence[str], refs, **options) -> Score:
    """Corpus chrF (``word_order=2`` in options gives chrF++) of detokenised ``hyps`` against raw ``refs``."""
    from sacrebleu.metrics import CHRF

    streams = _check_corpus(hyps, refs, "chrf")
    metric = CHRF(**options)
    result = metric.corpus_score(list(hyps), streams)
    return Score(float(result.score), str(metric.get_signature()))


def translation_scores(hyps: Sequence[str], refs) -> dict:
    """BLEU and chrF with their signatures, as one JSON-able dict (what ``evaluate`` prints and logs)."""
    bleu_score, chrf_score = bleu(hyps, refs), chrf(hyps, refs)
    return {
        "bleu": bleu_score.score,
        "bleu_signature": bleu_score.signature,
        "chrf": chrf_score.score,
        "chrf_signature": chrf_score.signature,
        "sentences": len(list(hyps)),
    }


def _total(value, name: str) -> float:
    total = float(np.sum(np.asarray(value, dtype=np.float64)))
    if not math.isfinite(total):
        raise ValueError(f"perplexity: {name} is not finite ({total})")
    return total


def mean_loss(total_loss, total_tokens) -> float:
    """Mean per-token loss from a summed loss and a token count (scalars, or per-batch sequences that are summed)."""
    loss, tokens = _total(total_loss, "total_loss"), _total(total_tokens, "total_tokens")
    if tokens <= 0:
        raise ValueError(f"perplexity: total_tokens must be positive, got {tokens:g}")
    if loss < 0:
        raise ValueError(f"perplexity: total_loss must be a sum of cross-entropies (>= 0), got {loss:g}")
    return loss / tokens


def perplexity(total_loss, total_tokens) -> float:
    """``exp(total_loss / total_tokens)``; ``inf`` when it overflows a float64 (a model that has not learned)."""
    return _exp_or_inf(mean_loss(total_loss, total_tokens))


def _exp_or_inf(mean: float) -> float:
    return math.exp(mean) if mean < 709.0 else math.inf  # exp(709.8) is the largest float64


def lm_scores(mean: float, tokens: int, characters: int, n_bytes: int) -> dict:
    """A language model's mean loss (nats per token over ``tokens`` predictions) as loss, perplexity and bits per
    token, per character and per UTF-8 byte of the text those tokens spell (the same total bits, divided)."""
    total_bits = mean * tokens / math.log(2)
    return {
        "loss": mean,
        "perplexity": _exp_or_inf(mean),
        "bits_per_token": mean / math.log(2),
        "bits_per_char": total_bits / characters,
        "bits_per_byte": total_bits / n_bytes,
    }


def bits_per_token(total_loss, total_tokens) -> float:
    """Mean loss in bits (per character for a character model, per byte for a byte model)."""
    return mean_loss(total_loss, total_tokens) / math.log(2.0)


# --------------------------------------------------------------------------------------------------------------------
# Human evaluation
# --------------------------------------------------------------------------------------------------------------------


def write_human_eval_sheet(
    path: str | os.PathLike,
    sources: Sequence[str],
    references: Sequence[str],
    hypotheses: Sequence[str],
    *,
    seed: int = 0,
    sample_size: int | None = None,
    ids: Sequence[int] | None = None,
) -> Path:
    """Write the rating sheet (UTF-8 CSV) and return its path.

    Rows are shuffled by ``np.random.default_rng(seed)``; ``sample_size`` keeps only the first ``sample_size``
    shuffled rows (a seeded random sample). ``ids`` default to the 0-based sentence positions.
    """
    count = len(sources)
    if not (len(references) == len(hypotheses) == count):
        raise ValueError(
            f"human-eval sheet: {count} sources, {len(references)} references and {len(hypotheses)} "
            f"hypotheses; they must be aligned"
        )
    ids = list(range(count)) if ids is None else list(ids)
    if len(ids) != count:
        raise ValueError(f"human-eval sheet: {len(ids)} ids for {count} sentences")
    order = np.random.default_rng(seed).permutation(count)
    if sample_size is not None:
        order = order[:sample_size]
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(SHEET_COLUMNS)
    for index in order:
        writer.writerow([ids[index], sources[index], references[index], hypotheses[index], "", ""])
    return write_atomic(path, handle.getvalue())


def summarise_sheet(path: str | os.PathLike) -> dict:
    """Means and counts of a filled sheet: ``{"rows", "rated": {col: n}, "unrated": {col: n}, "mean": {col: m},
    "histogram": {col: {score: n}}}``. Empty cells are unrated; anything else must be a number in 1-5."""
    path = Path(path)
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as error:
        raise SheetError(f"cannot read human-eval sheet {path}: {error}") from None
    try:
        with handle:
            return _summarise_rows(csv.DictReader(handle), path)
    except UnicodeDecodeError:
        raise SheetError(f"{path}: not a CSV sheet (not UTF-8 text)") from None


def _summarise_rows(reader, path):
    header = reader.fieldnames or []
    missing = [column for column in ("id", *SCORE_COLUMNS) if column not in header]
    if missing:
        raise SheetError(f"{path}: missing column(s) {missing}; the header is {header}, expected {list(SHEET_COLUMNS)}")
    scores: dict[str, list[float]] = {column: [] for column in SCORE_COLUMNS}
    unrated = {column: 0 for column in SCORE_COLUMNS}
    rows, seen = 0, {}
    for row in reader:
        rows += 1
        line = reader.line_num
        if row.get("id") in seen:
            raise SheetError(
                f"{path}: line {line}: id {row.get('id')} is already rated at line "
                f"{seen[row.get('id')]}; each sentence appears once"
            )
        seen[row.get("id")] = line
        for column in SCORE_COLUMNS:
            cell = (row.get(column) or "").strip()
            if not cell:
                unrated[column] += 1
                continue
            try:
                value = float(cell)
            except ValueError:
                raise SheetError(
                    f"{path}: line {line} (id {row.get('id')}): {column} {cell!r} is not a number; "
                    f"use {SCORE_RANGE[0]}-{SCORE_RANGE[1]} or leave it empty"
                ) from None
            if not SCORE_RANGE[0] <= value <= SCORE_RANGE[1]:
                raise SheetError(
                    f"{path}: line {line} (id {row.get('id')}): {column} {cell} is outside "
                    f"{SCORE_RANGE[0]}-{SCORE_RANGE[1]}"
                )
            if not value.is_integer():
                raise SheetError(
                    f"{path}: line {line} (id {row.get('id')}): {column} {cell} is not a whole "
                    f"score; the scale is {SCORE_RANGE[0]}-{SCORE_RANGE[1]} in steps of 1"
                )
            scores[column].append(value)
    summary = {
        "rows": rows,
        "rated": {c: len(v) for c, v in scores.items()},
        "unrated": unrated,
        "mean": {c: (float(np.mean(v)) if v else None) for c, v in scores.items()},
        "histogram": {
            c: {str(s): int(sum(1 for x in v if round(x) == s)) for s in range(SCORE_RANGE[0], SCORE_RANGE[1] + 1)}
            for c, v in scores.items()
        },
    }
    return summary


def format_sheet_summary(summary: dict) -> str:
    lines = [f"{summary['rows']} rows"]
    for column in SCORE_COLUMNS:
        mean = summary["mean"][column]
        mean_text = "n/a" if mean is None else f"{mean:.2f}"
        histogram = " ".join(f"{score}:{count}" for score, count in summary["histogram"][column].items())
        lines.append(
            f"{column:9s} mean {mean_text} over {summary['rated'][column]} rated "
            f"({summary['unrated'][column]} unrated)  [{histogram}]"
        )
    return "\n".join(lines)
