"""The training split of a translation run as a mix of corpora, with subword sampling: the data side of the
low-resource recipe (subword regularisation, back-translation; see README "Low-resource translation").

Legend: N examples in an epoch, n pairs of one corpus.

A mix is the corpus's own training pairs (``[data]``: weight ``train_weight``, optionally only those of the first
``train_lines`` file lines) plus every entry of ``data.train_corpora``, each aligned files or a TSV with its own
``weight`` and an optional ``tag``: tagged sources start with the piece ``data.tag`` (tagged back-translation,
Caswell et al. 2019: the model learns to tell synthetic sources from real ones; real sources, and every source at
test time, carry no tag). A weight is the number of times a corpus is seen per epoch: 3 repeats each pair three
times, 0.5 takes a different random half every epoch (``floor(w)`` copies of every pair plus a random
``round((w - floor(w)) * n)`` of them).

With ``tokenizer.sample_alpha > 0`` every training sentence is segmented afresh every epoch (subword
regularisation, Kudo 2018; BPE-dropout for a BPE tokenizer); validation and test always use the deterministic
segmentation. Which pairs (and copies) an epoch holds and how they are segmented are a pure function of
``(train.seed, epoch)``, so the example count is the same every epoch and a resumed run rebuilds exactly the
epoch it stopped in: the checkpointed data state stays the batch iterator's ``(epoch, batch_index)``.

Which pairs are too long for a batch or the position table is decided once, on the deterministic segmentation (and
reported with file lines, like an unmixed training split); a sampled segmentation of a kept pair that is longer than
the limit falls back to the deterministic one, so sampling never changes the set of examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, Number, check_keys
from .data import BatchIterator, DataValidationError, TranslationDataset, limit_subword_length
from .datasets import ParallelText, ValidationOptions, load_parallel_files, load_tsv

CORPUS_KEYS = ("src_path", "tgt_path", "tsv_path", "src_column", "tgt_column", "weight", "tag")
WEIGHT = Number(float, 0, lo_open=True)
COLUMN = Number(int, 0)
ALPHA = Number(float, 0)
NBEST = Number(int, -1)
# Distinct from batch_order's [seed, epoch]: which copies an epoch holds and how it is segmented never correlate
# with how it is shuffled.
_MIX_STREAM = 0x6D6978


@dataclass
class TrainingPart:
    """One corpus of the mix: its pairs (already validated), weight and whether its sources are tagged."""

    name: str
    pairs: ParallelText
    weight: float = 1.0
    tagged: bool = False


def sampling_settings(tok: dict) -> tuple[float, int] | None:
    """``(alpha, nbest)`` of the [tokenizer] section, or None when sampling is off (``sample_alpha = 0``)."""
    alpha = ALPHA.check("[tokenizer] sample_alpha", tok.get("sample_alpha", 0.0))
    nbest = NBEST.check("[tokenizer] nbest", tok.get("nbest", -1))
    if alpha == 0:
        return None
    if tok.get("kind", "sentencepiece") != "sentencepiece":
        raise ConfigError(f"[tokenizer] sample_alpha={alpha} needs a SentencePiece tokenizer (kind={tok['kind']!r})")
    if tok.get("model_type") == "bpe":
        if alpha >= 1:
            raise ConfigError(
                f"[tokenizer] sample_alpha={alpha}: for a BPE tokenizer it is the BPE-dropout probability, "
                "in (0, 1) (0.1 is usual)"
            )
    elif nbest in (0, 1):
        raise ConfigError(
            f"[tokenizer] nbest={nbest} leaves one segmentation to sample from; use -1 (the whole lattice) or a "
            "number >= 2 of best segmentations (Kudo 2018: 64 with sample_alpha 0.1)"
        )
    return float(alpha), int(nbest)


def load_training_corpora(entries, *, src_lang: str, tgt_lang: str, validation: ValidationOptions) -> list:
    """``data.train_corpora`` (a list of tables) as ``TrainingPart`` s, every file validated like a training split."""
    if not isinstance(entries, list):
        raise ConfigError(f"[data] train_corpora must be a list of tables, got {entries!r}")
    parts = []
    for number, entry in enumerate(entries, start=1):
        where = f"[data] train_corpora entry {number}"
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where} must be a table (tsv_path, or src_path and tgt_path; weight; tag), got {entry!r}"
            )
        check_keys(f"data.train_corpora entry {number}", entry, CORPUS_KEYS)
        weight = WEIGHT.check(f"{where} weight", entry.get("weight", 1.0))
        tagged = entry.get("tag", False)
        if not isinstance(tagged, bool):
            raise ConfigError(f"{where} tag must be true or false, got {tagged!r}")
        if entry.get("tsv_path"):
            if entry.get("src_path") or entry.get("tgt_path"):
                raise ConfigError(f"{where}: give either tsv_path or src_path and tgt_path, not both")
            src_column = int(COLUMN.check(f"{where} src_column", entry.get("src_column", 0)))
            tgt_column = int(COLUMN.check(f"{where} tgt_column", entry.get("tgt_column", 1)))
            if src_column == tgt_column:
                raise ConfigError(f"{where}: src_column and tgt_column are both {src_column}")
            pairs, _ = load_tsv(
                entry["tsv_path"],
                src_column=src_column,
                tgt_column=tgt_column,
                src_lang=src_lang,
                tgt_lang=tgt_lang,
                validation=validation,
            )
            name = str(entry["tsv_path"])
        elif entry.get("src_path") and entry.get("tgt_path"):
            pairs, _ = load_parallel_files(
                entry["src_path"], entry["tgt_path"], src_lang=src_lang, tgt_lang=tgt_lang, validation=validation
            )
            name = f"{entry['src_path']} / {entry['tgt_path']}"
        else:
            raise ConfigError(f"{where} needs tsv_path, or src_path and tgt_path (two aligned files)")
        if len(pairs) == 0:
            raise DataValidationError(f"{where}: {name} holds no usable sentence pair")
        parts.append(TrainingPart(name, pairs, weight, tagged))
    return parts


CORPUS_PATH_KEYS = ("tsv_path", "src_path", "tgt_path")


def absolute_corpus_paths(entries):
    """``data.train_corpora`` with every file path made absolute, in place (a run records where its files are, so that
    a resumed run, started from anywhere, names the same files); -> the entries."""
    for entry in entries or []:
        if isinstance(entry, dict):
            for key in CORPUS_PATH_KEYS:
                if isinstance(entry.get(key), str) and entry[key]:
                    entry[key] = str(Path(entry[key]).expanduser().resolve())
    return entries


def corpus_files(entries) -> list[Path]:
    """The files ``data.train_corpora`` names (recorded with the run's data identity)."""
    return [
        Path(e[key])
        for e in entries
        if isinstance(e, dict)
        for key in ("tsv_path", "src_path", "tgt_path")
        if e.get(key)
    ]


def copies(n: int, weight: float, rng: np.random.Generator) -> np.ndarray:
    """The indices of one epoch's copies of a corpus of ``n`` pairs at ``weight``: ``floor(weight)`` copies of every
    pair, then a random ``round(frac * n)`` of them without repetition (in their corpus order)."""
    whole = math.floor(weight)
    extra = int(round((weight - whole) * n))
    picked = np.sort(rng.choice(n, size=extra, replace=False)) if extra else np.zeros(0, dtype=np.int64)
    return np.concatenate([np.tile(np.arange(n), whole), picked]).astype(np.int64)


class TrainingMix:
    """The examples of every epoch: ``dataset(epoch)`` is a ``TranslationDataset``, a pure function of the epoch."""

    def __init__(
        self,
        parts: list[TrainingPart],
        src_tok,
        tgt_tok,
        *,
        seed: int,
        max_len: int,
        why: str = "",
        on_bad: str = "filter",
        sampling: tuple[float, int] | None = None,
        tag_id: int | None = None,
    ):
        if any(part.tagged for part in parts) and tag_id is None:
            raise ConfigError("a corpus of data.train_corpora has tag = true but data.tag names no piece")
        self.src_tok, self.tgt_tok, self.seed, self.sampling, self.max_len = src_tok, tgt_tok, seed, sampling, max_len
        self.parts, self.reports = [], []
        # Per part: the kept pairs' texts, their deterministic ids (tag included) and the source prefix.
        self._texts, self._ids, self._prefix = [], [], []
        for part in parts:
            prefix = [tag_id] if part.tagged else []
            src_ids = [prefix + ids for ids in src_tok.encode(part.pairs.src)]
            tgt_ids = tgt_tok.encode(part.pairs.tgt)
            lines = [part.pairs.line_of(i) for i in range(len(part.pairs))]
            kept_src, kept_tgt, report = limit_subword_length(
                src_ids, tgt_ids, max_len=max_len, on_bad=on_bad, name=part.name, line_numbers=lines,
                origin=part.pairs.origin, why=why,
            )  # fmt: skip
            if not kept_src:
                raise DataValidationError(f"{part.name}: no training pair is left: {report.message}")
            kept = report.kept_indices
            self._texts.append(([part.pairs.src[i] for i in kept], [part.pairs.tgt[i] for i in kept]))
            self._ids.append((kept_src, kept_tgt))
            self._prefix.append(prefix)
            self.parts.append(part)
            self.reports.append(report)
        self.sizes = [len(ids[0]) for ids in self._ids]
        self.counts = [len(copies(n, part.weight, np.random.default_rng(0))) for n, part in zip(self.sizes, self.parts)]
        for count, part in zip(self.counts, self.parts):
            if count == 0:
                raise ConfigError(f"{part.name}: weight {part.weight} of its {len(part.pairs)} pairs is no pair at all")
        self.varies = sampling is not None or any(part.weight != int(part.weight) for part in self.parts)
        self._fixed: TranslationDataset | None = None

    def __len__(self) -> int:
        return sum(self.counts)

    def describe(self) -> str:
        return "; ".join(
            f"{part.name}: {n} pairs x {part.weight:g}{' (tagged)' if part.tagged else ''}"
            for part, n in zip(self.parts, self.sizes)
        )

    def dataset(self, epoch: int) -> TranslationDataset:
        if not self.varies and self._fixed is not None:
            return self._fixed
        rng = np.random.default_rng([int(self.seed), int(epoch), _MIX_STREAM])
        src_all: list = []
        tgt_all: list = []
        for part, n, (src_texts, tgt_texts), (src_ids, tgt_ids), prefix in zip(
            self.parts, self.sizes, self._texts, self._ids, self._prefix
        ):
            chosen = copies(n, part.weight, rng)
            src = [src_ids[i] for i in chosen]
            tgt = [tgt_ids[i] for i in chosen]
            if self.sampling is not None:
                alpha, nbest = self.sampling
                seeds = rng.integers(0, 1 << 31, size=2)
                sampled_src = self.src_tok.sample_encode([src_texts[i] for i in chosen], alpha, nbest, int(seeds[0]))
                sampled_tgt = self.tgt_tok.sample_encode([tgt_texts[i] for i in chosen], alpha, nbest, int(seeds[1]))
                for row, (x, y) in enumerate(zip(sampled_src, sampled_tgt)):
                    x = prefix + x
                    if len(x) + 1 <= self.max_len and len(y) + 1 <= self.max_len:  # + EOS / BOS, as when kept
                        src[row], tgt[row] = x, y
            src_all += src
            tgt_all += tgt
        dataset = TranslationDataset(src_all, tgt_all)
        if not self.varies:
            self._fixed = dataset
        return dataset


class MixBatchIterator(BatchIterator):
    """A ``BatchIterator`` whose examples are rebuilt at the start of every epoch from a ``TrainingMix``; its state
    (the checkpointed data state) is the plain iterator's, since an epoch's examples follow from its number."""

    def __init__(self, mix: TrainingMix, *, max_tokens: int, seed: int = 0, **options):
        self.mix = mix
        self._dataset_epoch = 0
        super().__init__(mix.dataset(0), max_tokens=max_tokens, seed=seed, **options)

    def batches(self, epoch: int) -> list[np.ndarray]:
        if epoch != self._dataset_epoch:
            self.dataset, self._dataset_epoch = self.mix.dataset(epoch), epoch
        return super().batches(epoch)
