"""Summarisation (SAMSum: dialogue -> summary) on the encoder-decoder Transformer, and the extractive baselines.

The task is ``TranslationTask`` with what long sources and short targets need instead of a translation's data rules
(``LongSourceTask``, which the dialogue task shares):

- no length-ratio or whitespace-length filter on the training pairs (a 300-word chat with a 20-word summary is the
  normal case, not a misalignment); both stay [data] options (``max_ratio``, ``max_tokens``: 0 = off);
- a source longer than ``data.truncate_src`` sub-words (and what the model's positions hold) is cut, never
  dropped, and the cut is reported with its count and first line (``cut_sources``; a dialogue context keeps its
  most recent turns: it is cut from the left);
- validation decodes the first ``train.bleu_max_sentences`` validation sources (greedy, ``train.bleu_beam``) and
  scores ROUGE-1/2/L F1 with the ``rouge-score`` package (Lin 2004; Google's implementation, the field's standard),
  with stemming, on detokenised text; the best checkpoint is the one with the highest ROUGE-L.

Baselines (Gliwa et al. 2019): LEAD-n, the first n turns; LONGEST-n, the n longest turns (whitespace tokens, ties to
the earlier turn) in dialogue order; scored by the same ``rouge_scores``.
"""

from __future__ import annotations

import re

import numpy as np

from .console import log
from .datasets import Corpus, ParallelText
from .dialogue_corpora import TURN_SEP, load_samsum, split_turns
from .evaluate import _check_corpus, perplexity
from .extras import require
from .tasks import TranslationTask, corpus_loss, decode_sources, truncate_for_model, validation_options
from .data import TranslationDataset

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
# rougeLsum (summary-level LCS) reads sentences one a line: a line break, or . ! ? before white space, ends one.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SUMMARY_DATA_DEFAULTS: dict = dict(
    corpus="samsum",
    src="dialogue",
    tgt="summary",
    max_tokens=0,  # no whitespace-length filter: long sources are cut (truncate_src), not dropped
    max_ratio=0.0,  # no length-ratio filter: a long dialogue with a short summary is the task
    truncate_src=400,  # source sub-words kept (also capped by model.max_len - 2)
)


def sentence_lines(text: str) -> str:
    """A text one sentence a line (for rougeLsum): lines, each split after ``.``, ``!`` or ``?`` before white space."""
    return "\n".join(s for line in text.split("\n") for s in SENTENCE_END.split(line.strip()) if s.strip())


def rouge_scores(hyps, refs) -> dict:
    """Mean ROUGE-1/2/L F1 (x 100) of detokenised ``hyps`` against raw ``refs`` (one reference each), by the
    ``rouge-score`` package with its default tokenizer (lower-cased alphanumeric words) and Porter stemming; also
    rougeLsum (the summary-level LCS of ROUGE-1.5.5's ROUGE-L) on the texts one sentence a line (``sentence_lines``)."""
    streams = _check_corpus(hyps, refs, "rouge")
    if len(streams) != 1:
        raise ValueError(f"rouge: one reference per hypothesis, got {len(streams)} reference sets")
    rouge_scorer = require("rouge_score.rouge_scorer", "rouge", "ROUGE scores")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hyps, streams[0]):
        scores = scorer.score(sentence_lines(ref), sentence_lines(hyp))  # (target, prediction)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    count = len(streams[0])
    return {
        **{key: 100.0 * total / count for key, total in totals.items()},
        "rouge_signature": "rouge-score, F1, use_stemmer=True, default tokenizer, mean over summaries; "
        "rougeLsum on sentences split at line breaks and [.!?] + space",
        "summaries": count,
    }


# ---------------------------------------------------------------------------------------------- extractive baselines
def lead(source: str, n: int) -> str:
    """LEAD-n: the first ``n`` turns of a dialogue (turns joined by the separator), one a line."""
    return "\n".join(split_turns(source)[:n])


def longest(source: str, n: int) -> str:
    """LONGEST-n: the ``n`` longest turns (in whitespace tokens; ties to the earlier turn), in dialogue order."""
    turns = split_turns(source)
    order = sorted(range(len(turns)), key=lambda i: (-len(turns[i].split()), i))[:n]
    return "\n".join(turns[i] for i in sorted(order))


BASELINES = {"lead": lead, "longest": longest}


def baseline_scores(pairs: ParallelText, n: int = 3) -> dict:
    """ROUGE of LEAD-n and LONGEST-n on some (dialogue -> summary) pairs: {"LEAD-n": scores, "LONGEST-n": ...}."""
    return {
        f"{name.upper()}-{n}": rouge_scores([pick(s, n) for s in pairs.src], pairs.tgt)
        for name, pick in BASELINES.items()
    }


# ---------------------------------------------------------------------------------------------- the tasks
class LongSourceTask(TranslationTask):
    """A sequence-to-sequence task whose sources are dialogues: the turn separator is one piece, and sources are
    cut to ``data.truncate_src`` sub-words from ``cut_side`` (reported), never dropped."""

    user_symbols = (TURN_SEP,)
    cut_side = "right"  # "right": keep the beginning; "left": keep the end (the most recent turns)

    def source_limit(self) -> int:
        limit = self.model_config.max_len - 2  # decoding (decode_sources) keeps max_len - 2 source sub-words
        return min(int(self.data_cfg["truncate_src"]) or limit, limit)

    def cut_sources(self, src_ids, pairs):
        return cut_source_ids(src_ids, self.source_limit(), self.cut_side, pairs)

    def decode_valid(self, model, settings, **options):
        """(outputs, references) of the first ``train.bleu_max_sentences`` validation pairs (0: all)."""
        limit = int(settings["bleu_max_sentences"]) or len(self.valid_set)
        outputs = decode_sources(
            model,
            self.tgt_tok,
            [ids.tolist() for ids in self.valid_set.src_ids[:limit]],
            beam=int(settings["bleu_beam"]),
            max_tokens=int(settings["decode_max_tokens"]),
            **options,
        )
        return outputs, self.corpus["valid"].tgt[:limit]

    def reference_loss(self, model, settings) -> dict:
        total, tokens = corpus_loss(model, self.valid_set, int(settings["decode_max_tokens"]))
        return {"valid_loss": total / tokens, "valid_ppl": perplexity(total, tokens)}


def cut_source_ids(src_ids, limit: int, side: str, pairs: ParallelText | None = None, what: str = "source") -> list:
    """Each source cut to ``limit`` sub-words (``side`` "right" keeps the beginning, "left" the end); how many were
    cut, and the first one's line, is logged (never silent)."""
    cut = [i for i, ids in enumerate(src_ids) if len(ids) > limit]
    if not cut:
        return list(src_ids)
    where = (
        f"line {pairs.line_of(cut[0])} of {pairs.origin}"
        if pairs is not None and pairs.origin
        else f"{what} {cut[0] + 1}"
    )
    kept = "first" if side == "right" else "last"
    log.info(
        f"note: {len(cut)} of {len(src_ids)} {what}s longer than {limit} sub-words keep their {kept} {limit} (first: {where})"
    )
    return [list(ids[:limit]) if side == "right" else list(ids[len(ids) - limit :]) for ids in src_ids]


class SummarisationTask(LongSourceTask):
    metric, metric_mode = "valid_rougeL", "max"
    data_defaults = SUMMARY_DATA_DEFAULTS

    def load_corpus(self, data: dict) -> Corpus:
        return load_summary_corpus(data)

    def validate(self, model, settings):
        metrics = self.reference_loss(model, settings)
        outputs, references = self.decode_valid(model, settings)
        scores = rouge_scores(outputs, references)
        metrics.update({f"valid_{key}": scores[key] for key in ROUGE_TYPES})
        return metrics


def load_summary_corpus(data: dict) -> Corpus:
    """SAMSum as a [data] section (over ``SUMMARY_DATA_DEFAULTS``) says."""
    if data["corpus"] != "samsum":
        raise ValueError(f"[data] corpus {data['corpus']!r}: summarisation reads 'samsum'")
    return load_samsum(data_dir=data["data_dir"] or None, validation=validation_options(data))


def encode_for_model(model, src_tok, tgt_tok, pairs: ParallelText, limit: int, side: str) -> TranslationDataset:
    """An evaluation split as the run's model reads it: sources cut like in training, targets to the positions."""
    src_ids = cut_source_ids(src_tok.encode(pairs.src), limit, side, pairs)
    return TranslationDataset(*truncate_for_model(src_ids, tgt_tok.encode(pairs.tgt), model.config, pairs))


def source_limit_of(model, data: dict) -> int:
    limit = model.config.max_len - 2
    return min(int(data.get("truncate_src") or limit), limit)


def reference_loss_and_outputs(
    model, src_tok, tgt_tok, pairs: ParallelText, data: dict, side: str, max_tokens: int, progress: bool, **decoding
) -> tuple[float, int, list[str]]:
    """The evaluation both long-source tasks share: the split encoded as the model reads it (sources cut from
    ``side``), the references' summed loss and token count, and the decoded sources (``decoding``: decode_sources'
    beam, alpha, no_repeat_ngram_size, sampling). Returns (total loss, target tokens, outputs)."""
    dataset = encode_for_model(model, src_tok, tgt_tok, pairs, source_limit_of(model, data), side)
    total, tokens = corpus_loss(model, dataset, max_tokens, progress)
    sources = [ids.tolist() for ids in dataset.src_ids]
    outputs = decode_sources(model, tgt_tok, sources, max_tokens=max_tokens, progress=progress, **decoding)
    return total, tokens, outputs


def evaluate_summaries(
    model,
    src_tok,
    tgt_tok,
    pairs: ParallelText,
    data: dict,
    *,
    beam=4,
    alpha=0.6,
    no_repeat_ngram_size=3,
    max_tokens=8000,
    progress=False,
) -> tuple[dict, list[str]]:
    """What ``evaluate`` reports for a summarisation checkpoint: the references' loss and perplexity, and ROUGE of
    the decoded summaries (beam search with the length penalty and n-gram blocking). Returns (scores, summaries)."""
    if len(pairs) == 0:
        raise ValueError("there are no dialogues to summarise")
    total, tokens, outputs = reference_loss_and_outputs(
        model,
        src_tok,
        tgt_tok,
        pairs,
        data,
        "right",
        max_tokens,
        progress,
        beam=beam,
        alpha=alpha,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    scores = {"loss": total / tokens, "perplexity": perplexity(total, tokens), **rouge_scores(outputs, pairs.tgt)}
    scores.update(beam=beam, alpha=alpha, no_repeat_ngram_size=no_repeat_ngram_size)
    return scores, outputs


def mean_length(texts) -> float:
    """Mean length in whitespace tokens."""
    return float(np.mean([len(t.split()) for t in texts])) if texts else 0.0
