"""Data between raw text and the model: validation of parallel text, token-count batching, LM windows.

Legend for shapes: B batch (sentences), S source length, T target length (with BOS or EOS), N examples.

Three parts, independent of the autograd engine (everything here is plain Python and NumPy int64):

1. ``validate_pairs``: the checks every parallel corpus goes through before training. Leading/trailing whitespace
   is stripped (reported as a count, nothing else changes); pairs that are empty or whitespace-only on either side,
   not valid UTF-8, longer than ``max_tokens`` whitespace tokens or ``max_chars`` characters on either side, or whose
   token-length ratio exceeds ``max_ratio`` (Moses' ``clean-corpus-n`` rule, 9 by default) are either refused with one
   error listing every reason with counts and line numbers (``on_bad="error"``, the default) or dropped and reported
   (``on_bad="filter"``). A ``ValidationReport`` always comes back and is logged: nothing is dropped silently.

2. Batching for translation: ``TranslationDataset`` holds encoded sentence pairs; ``BatchIterator`` yields ``Batch``
   objects whose padded size ``B * max(S, T)`` stays within ``max_tokens``. The order of epoch ``e`` is a pure
   function of ``(seed, e)`` (see ``batch_order``), and the iterator's position is a small dict, so a resumed run sees
   exactly the batches the uninterrupted run would have seen.

3. Language modelling: a contiguous token stream split by fraction (``split_stream``) and random windows of
   ``block_size`` drawn from a seeded ``np.random.Generator`` (``LMBatcher``), with the generator's state exposed;
   or, for recurrent LMs trained with truncated BPTT, B contiguous sub-streams read ``block_size`` columns at a
   time (``LMStreamBatcher``, PyTorch's word_language_model batching), its position exposed.

Special-token layout of a translation batch (ids come from the tokenizer; pad=0, unk=1, bos=2, eos=3 by default):

    src     = x + [EOS]       (EOS on the source is optional, on by default: no source is ever empty)
    tgt_in  = [BOS] + y       what the decoder reads
    tgt_out = y + [EOS]       what it must predict; tgt_in and tgt_out have the same length T = len(y) + 1
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import numpy as np

log = logging.getLogger("transformer.data")

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

# --------------------------------------------------------------------------------------------------------------------
# 1. Validation of parallel text
# --------------------------------------------------------------------------------------------------------------------

# Reasons a pair can be refused, in the order they are checked (a pair is counted under its first reason only).
REASON_INVALID_UTF8 = "invalid UTF-8"
REASON_MALFORMED = "malformed line (too few TSV columns)"
REASON_EMPTY = "empty or whitespace-only"
REASON_TOO_MANY_TOKENS = "too many tokens"
REASON_TOO_MANY_CHARS = "too many characters"
REASON_LENGTH_RATIO = "extreme length ratio"
REASON_TOO_MANY_SUBWORDS = "too many subword tokens"

ON_BAD_CHOICES = ("error", "filter")


class DataValidationError(ValueError):
    """Raised when a corpus fails validation and ``on_bad="error"``; the message names files, lines and counts."""


@dataclass
class ValidationReport:
    """What validation did to one corpus (or split): kept/stripped counts and dropped line numbers by reason.

    Line numbers are 1-based positions in the original files (or TSV), so a user can look them up.
    """

    name: str
    total: int = 0
    kept: int = 0
    stripped: int = 0  # pairs whose leading/trailing whitespace was removed (kept, just cleaned)
    dropped: dict[str, list[int]] = field(default_factory=dict)
    kept_lines: list[int] = field(default_factory=list, repr=False)  # the line of each kept pair, in order
    # limit_subword_length: the position of each kept pair in its input (lines may repeat: a dialogue's turns share one)
    kept_indices: list[int] = field(default_factory=list, repr=False)
    message: str = ""  # what was dropped and why, in words

    @property
    def num_dropped(self) -> int:
        return sum(len(lines) for lines in self.dropped.values())

    def summary(self, max_lines: int = 5) -> str:
        text = f"{self.name}: {self.total} pairs, kept {self.kept}"
        if self.stripped:
            text += f", stripped stray leading/trailing whitespace on {self.stripped}"
        if self.dropped:
            parts = [
                f"{reason}: {len(lines)} ({_format_lines(lines, max_lines)})" for reason, lines in self.dropped.items()
            ]
            text += f", dropped {self.num_dropped} [" + "; ".join(parts) + "]"
        return text

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "total": self.total,
            "kept": self.kept,
            "stripped": self.stripped,
            "dropped": {reason: len(lines) for reason, lines in self.dropped.items()},
        }


def _format_lines(lines: Sequence[int], max_lines: int) -> str:
    shown = ", ".join(str(n) for n in lines[:max_lines])
    more = f", ... {len(lines) - max_lines} more" if len(lines) > max_lines else ""
    word = "line" if len(lines) == 1 else "lines"
    return f"{word} {shown}{more}"


def check_line_counts(src_name: str, src_count: int, tgt_name: str, tgt_count: int) -> None:
    """Two sides of a parallel corpus must have the same number of lines; this cannot be filtered, only refused."""
    if src_count != tgt_count:
        raise DataValidationError(
            f"parallel files differ in length: {src_name} has {src_count} lines, {tgt_name} has {tgt_count} lines; "
            f"line i of one must translate line i of the other"
        )


def validate_pairs(
    src: Sequence[str | None],
    tgt: Sequence[str | None],
    *,
    name: str = "corpus",
    src_name: str = "source",
    tgt_name: str = "target",
    line_numbers: Sequence[int] | None = None,
    malformed: Sequence[int] = (),
    max_tokens: int | None = 250,
    max_chars: int | None = None,
    max_ratio: float | None = 9.0,
    on_bad: str = "error",
) -> tuple[list[str], list[str], ValidationReport]:
    """Strip, check and (as configured) filter aligned sentence pairs.

    ``src[i]``/``tgt[i]`` is ``None`` where the reader could not decode the line as UTF-8. ``line_numbers[i]`` is the
    1-based line of pair ``i`` in its file (defaults to ``i + 1``); ``malformed`` lists 0-based indices of pairs whose
    line could not be split (TSV with too few columns). Token counts are whitespace tokens (the subword length is not
    known yet); the ratio is ``max(len) / max(1, min(len))`` in those tokens.

    Returns ``(src_kept, tgt_kept, report)``. With ``on_bad="error"`` any bad pair raises ``DataValidationError``
    listing every reason with its count and first line numbers; with ``"filter"`` they are dropped and reported.
    """
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad must be one of {ON_BAD_CHOICES}, got {on_bad!r}")
    check_line_counts(src_name, len(src), tgt_name, len(tgt))
    if line_numbers is None:
        line_numbers = range(1, len(src) + 1)
    malformed_set = set(malformed)

    report = ValidationReport(name=name, total=len(src))
    src_kept: list[str] = []
    tgt_kept: list[str] = []
    for i, (s, t) in enumerate(zip(src, tgt)):
        reason = None
        if i in malformed_set:
            reason = REASON_MALFORMED
        elif s is None or t is None:
            reason = REASON_INVALID_UTF8
        else:
            s_clean, t_clean = s.strip(), t.strip()
            if s_clean != s or t_clean != t:
                report.stripped += 1
            if not s_clean or not t_clean:
                reason = REASON_EMPTY
            else:
                s_len, t_len = len(s_clean.split()), len(t_clean.split())
                if max_tokens is not None and max(s_len, t_len) > max_tokens:
                    reason = REASON_TOO_MANY_TOKENS
                elif max_chars is not None and max(len(s_clean), len(t_clean)) > max_chars:
                    reason = REASON_TOO_MANY_CHARS
                elif max_ratio is not None and max(s_len, t_len) / max(1, min(s_len, t_len)) > max_ratio:
                    reason = REASON_LENGTH_RATIO
        if reason is None:
            src_kept.append(s_clean)
            tgt_kept.append(t_clean)
            report.kept_lines.append(line_numbers[i])
        else:
            report.dropped.setdefault(reason, []).append(line_numbers[i])
    report.kept = len(src_kept)

    if report.dropped and on_bad == "error":
        limits = {
            REASON_TOO_MANY_TOKENS: f" (> {max_tokens} whitespace tokens on a side)",
            REASON_TOO_MANY_CHARS: f" (> {max_chars} characters on a side)",
            REASON_LENGTH_RATIO: f" (token-length ratio > {max_ratio})",
        }
        details = "; ".join(
            f"{reason}{limits.get(reason, '')}: {len(lines)} pair(s) at {_format_lines(lines, 5)}"
            for reason, lines in report.dropped.items()
        )
        raise DataValidationError(
            f"{name} ({src_name} / {tgt_name}): {report.num_dropped} of {report.total} pairs are bad: {details}. "
            f"Fix the data, change the limits, or set on_bad='filter' to drop them (they will be reported)."
        )
    log.log(logging.WARNING if report.dropped else logging.INFO, "%s", report.summary())
    return src_kept, tgt_kept, report


# --------------------------------------------------------------------------------------------------------------------
# 2. Translation batches
# --------------------------------------------------------------------------------------------------------------------


def pad_sequences(
    sequences: Sequence[Sequence[int] | np.ndarray],
    pad_id: int = PAD_ID,
    *,
    prefix: int | None = None,
    suffix: int | None = None,
    length: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``[prefix] + seq + [suffix]`` rows into an int64 array padded with ``pad_id`` on the right.

    Returns ``(ids (B, L), lengths (B,))``; ``L = max(lengths)`` unless ``length`` asks for more.
    """
    extra = (prefix is not None) + (suffix is not None)
    lengths = np.array([len(seq) + extra for seq in sequences], dtype=np.int64)
    width = int(lengths.max(initial=0))
    if length is not None:
        if length < width:
            raise ValueError(f"pad_sequences: length={length} is shorter than the longest sequence ({width})")
        width = length
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)  # (B, L)
    start = 1 if prefix is not None else 0
    for row, seq in enumerate(sequences):
        if prefix is not None:
            ids[row, 0] = prefix
        ids[row, start : start + len(seq)] = seq
        if suffix is not None:
            ids[row, start + len(seq)] = suffix
    return ids, lengths


def padding_mask(lengths: np.ndarray, max_len: int | None = None) -> np.ndarray:
    """Boolean (B, L) mask, True = real token, from per-row lengths (B,)."""
    lengths = np.asarray(lengths)
    if max_len is None:
        max_len = int(lengths.max(initial=0))
    return np.arange(max_len)[None, :] < lengths[:, None]


def mask_from_ids(ids: np.ndarray, pad_id: int = PAD_ID) -> np.ndarray:
    """Boolean mask of ids' shape, True = real token (not ``pad_id``)."""
    return np.asarray(ids) != pad_id


def causal_mask(query_len: int, key_len: int | None = None, query_offset: int = 0) -> np.ndarray:
    """Boolean (T, K), the one causal mask of the package: query row r (position ``query_offset + r``) may attend to
    key j iff j <= its position. ``causal_mask(T)`` is the square (T, T) mask of a whole sequence; an offset serves
    incremental decoding (T new queries after ``query_offset`` cached keys)."""
    key_len = query_len if key_len is None else key_len
    return np.arange(key_len)[None, :] <= np.arange(query_offset, query_offset + query_len)[:, None]


def attention_masks(src_mask: np.ndarray, tgt_mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Masks in the shapes attention broadcasts over heads (True = may attend):

    ``encoder`` (B, 1, 1, S): every query may attend to the real source keys;
    ``cross``   (B, 1, 1, S): the same mask for decoder-to-encoder attention;
    ``decoder`` (B, 1, T, T): causal and real target keys only (given ``tgt_mask``).
    """
    masks = {"encoder": src_mask[:, None, None, :], "cross": src_mask[:, None, None, :]}
    if tgt_mask is not None:
        length = tgt_mask.shape[1]
        masks["decoder"] = causal_mask(length)[None, None, :, :] & tgt_mask[:, None, None, :]
    return masks


@dataclass
class Batch:
    """One padded translation batch. All arrays int64; masks derived on demand (True = real token)."""

    src: np.ndarray  # (B, S)  x + [EOS] (if enabled), padded
    tgt_in: np.ndarray  # (B, T)  [BOS] + y, padded
    tgt_out: np.ndarray  # (B, T)  y + [EOS], padded
    src_lengths: np.ndarray  # (B,)
    tgt_lengths: np.ndarray  # (B,)    len(y) + 1
    indices: np.ndarray  # (B,)    positions of these pairs in the dataset, to map outputs back
    epoch: int = 0
    batch_index: int = 0
    last_in_epoch: bool = False

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def src_mask(self) -> np.ndarray:  # (B, S) bool
        return padding_mask(self.src_lengths, self.src.shape[1])

    @property
    def tgt_mask(self) -> np.ndarray:  # (B, T) bool
        return padding_mask(self.tgt_lengths, self.tgt_in.shape[1])

    @property
    def num_tgt_tokens(self) -> int:
        """Target tokens the loss is computed on (what tokens/s counts)."""
        return int(self.tgt_lengths.sum())

    @property
    def num_src_tokens(self) -> int:
        return int(self.src_lengths.sum())


def collate(
    src_seqs: Sequence[Sequence[int] | np.ndarray],
    tgt_seqs: Sequence[Sequence[int] | np.ndarray] | None,
    *,
    pad_id: int = PAD_ID,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    src_eos: bool = True,
    indices: Sequence[int] | np.ndarray | None = None,
) -> Batch:
    """Pad one group of encoded pairs into a ``Batch`` (see the module docstring for the layout).

    ``tgt_seqs=None`` gives a source-only batch (for translation): the target arrays are then empty (B, 0).
    """
    src, src_lengths = pad_sequences(src_seqs, pad_id, suffix=eos_id if src_eos else None)
    if tgt_seqs is None:
        empty = np.zeros((len(src_seqs), 0), dtype=np.int64)
        tgt_in, tgt_out, tgt_lengths = empty, empty.copy(), np.zeros(len(src_seqs), dtype=np.int64)
    else:
        tgt_in, tgt_lengths = pad_sequences(tgt_seqs, pad_id, prefix=bos_id)
        tgt_out, _ = pad_sequences(tgt_seqs, pad_id, suffix=eos_id)
    if indices is None:
        indices = range(len(src_seqs))
    return Batch(
        src=src,
        tgt_in=tgt_in,
        tgt_out=tgt_out,
        src_lengths=src_lengths,
        tgt_lengths=tgt_lengths,
        indices=np.asarray(indices, dtype=np.int64),
    )


class TranslationDataset:
    """Encoded sentence pairs plus the lengths batching needs.

    ``src_ids[i]``/``tgt_ids[i]`` are token ids without special tokens; the padded lengths include the specials
    (``src_length = len(x) + src_eos``, ``tgt_length = len(y) + 1``).
    """

    def __init__(
        self,
        src_ids: Sequence[Sequence[int]],
        tgt_ids: Sequence[Sequence[int]],
        *,
        pad_id: int = PAD_ID,
        bos_id: int = BOS_ID,
        eos_id: int = EOS_ID,
        src_eos: bool = True,
    ):
        if len(src_ids) != len(tgt_ids):
            raise ValueError(f"TranslationDataset: {len(src_ids)} source sentences but {len(tgt_ids)} targets")
        self.src_ids = [np.asarray(seq, dtype=np.int64) for seq in src_ids]
        self.tgt_ids = [np.asarray(seq, dtype=np.int64) for seq in tgt_ids]
        self.pad_id, self.bos_id, self.eos_id, self.src_eos = pad_id, bos_id, eos_id, src_eos
        self.src_lengths = np.array([len(seq) + int(src_eos) for seq in self.src_ids], dtype=np.int64)  # (N,)
        self.tgt_lengths = np.array([len(seq) + 1 for seq in self.tgt_ids], dtype=np.int64)  # (N,)

    def __len__(self) -> int:
        return len(self.src_ids)

    def collate(self, indices: Sequence[int] | np.ndarray) -> Batch:
        return collate(
            [self.src_ids[i] for i in indices],
            [self.tgt_ids[i] for i in indices],
            pad_id=self.pad_id,
            bos_id=self.bos_id,
            eos_id=self.eos_id,
            src_eos=self.src_eos,
            indices=indices,
        )


def limit_subword_length(
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    *,
    max_len: int,
    on_bad: str = "error",
    name: str = "train",
    src_eos: bool = True,
    line_numbers: Sequence[int] | None = None,
    origin: str = "",
    why: str = "",
) -> tuple[list, list, ValidationReport]:
    """Keep pairs whose padded lengths (source + EOS, target + BOS/EOS) fit ``max_len`` sub-words (what a batch or
    the model's position table holds, as ``why`` says); the rest raise ``DataValidationError`` or are dropped and
    reported, like ``validate_pairs``, with their 1-based ``line_numbers`` in ``origin`` (default: position in the
    split). Apply it to the training split only: evaluation sets must stay complete."""
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"on_bad must be one of {ON_BAD_CHOICES}, got {on_bad!r}")
    if len(src_ids) != len(tgt_ids):
        raise ValueError(f"limit_subword_length: {len(src_ids)} source sentences but {len(tgt_ids)} targets")
    if line_numbers is None:
        line_numbers = range(1, len(src_ids) + 1)
    where = f" of {origin}" if origin else " (1-based, in the split)"
    limit = f"{max_len} sub-word tokens with special tokens" + (f" ({why})" if why else "")
    report = ValidationReport(name=f"{name} (at most {limit})", total=len(src_ids))
    kept_src, kept_tgt = [], []
    for i, (x, y) in enumerate(zip(src_ids, tgt_ids)):
        if len(x) + int(src_eos) > max_len or len(y) + 1 > max_len:
            report.dropped.setdefault(REASON_TOO_MANY_SUBWORDS, []).append(line_numbers[i])
        else:
            kept_src.append(x)
            kept_tgt.append(y)
            report.kept_lines.append(line_numbers[i])
            report.kept_indices.append(i)
    report.kept = len(kept_src)
    if report.dropped:
        lines = report.dropped[REASON_TOO_MANY_SUBWORDS]
        report.message = (
            f"{name}: {len(lines)} of {report.total} pairs are longer than {limit}: {_format_lines(lines, 5)}{where}"
        )
        if on_bad == "error":
            raise DataValidationError(
                f"{report.message}; shorten or remove them, or set data.on_bad='filter' to drop them"
            )
        report.message += "; dropped"
        log.warning("%s", report.message)
    return kept_src, kept_tgt, report


def encode_splits(
    splits: dict,
    src_tokenizer,
    tgt_tokenizer,
    *,
    src_eos: bool = True,
    max_len: int | None = None,
    on_bad: str = "error",
) -> tuple[dict, list[ValidationReport]]:
    """``{split: TranslationDataset}`` from ``{split: ParallelText}`` (anything with ``.src``/``.tgt`` lists of
    strings) and the two tokenizers; ``max_len`` limits the training split through ``limit_subword_length``."""
    datasets, reports = {}, []
    for split, pairs in splits.items():
        src_ids, tgt_ids = src_tokenizer.encode(pairs.src), tgt_tokenizer.encode(pairs.tgt)
        if max_len is not None and split == "train":
            src_ids, tgt_ids, report = limit_subword_length(
                src_ids, tgt_ids, max_len=max_len, on_bad=on_bad, name=split, src_eos=src_eos
            )
            reports.append(report)
        datasets[split] = TranslationDataset(
            src_ids,
            tgt_ids,
            pad_id=src_tokenizer.pad_id,
            bos_id=tgt_tokenizer.bos_id,
            eos_id=tgt_tokenizer.eos_id,
            src_eos=src_eos,
        )
    return datasets, reports


def pack_batches(
    order: np.ndarray, sizes: np.ndarray, max_tokens: int, max_sentences: int | None = None
) -> list[np.ndarray]:
    """Greedily cut ``order`` (indices, already in the desired sequence) into batches whose padded size
    ``len(batch) * max(sizes[batch])`` is at most ``max_tokens`` (and at most ``max_sentences`` rows)."""
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for pos, index in enumerate(order):
        size = int(sizes[index])
        if size > max_tokens:
            raise ValueError(
                f"sentence {int(index) + 1} of the set is {size} sub-word tokens long (with special tokens), more than "
                f"a batch of max_tokens={max_tokens} holds; raise the batch size in tokens (--max-tokens, or "
                f"train.max_tokens / train.decode_max_tokens)"
            )
        count = pos - start + 1
        new_longest = max(longest, size)
        if count > 1 and (new_longest * count > max_tokens or (max_sentences is not None and count > max_sentences)):
            batches.append(order[start:pos])
            start, new_longest = pos, size
        longest = new_longest
    if start < len(order):
        batches.append(order[start:])
    return batches


def batch_order(
    src_lengths: np.ndarray,
    tgt_lengths: np.ndarray,
    *,
    max_tokens: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    chunk_size: int = 8192,
    max_sentences: int | None = None,
) -> list[np.ndarray]:
    """The batches (arrays of example indices) of one epoch: a pure function of its arguments.

    With ``shuffle``: a generator seeded by ``(seed, epoch)`` permutes the examples; the permutation is cut into
    chunks of ``chunk_size`` examples; each chunk is stably sorted by (target length, source length) and packed into
    token-count batches (``pack_batches``); finally the order of all batches is shuffled by the same generator. So
    sentences of similar length share a batch (little padding) while every epoch sees a different mix.
    Without ``shuffle`` (evaluation): the whole set sorted by length, batches in that order.
    """
    sizes = np.maximum(src_lengths, tgt_lengths)  # (N,) padded cost per row of a batch
    n = len(sizes)
    if not shuffle:
        order = np.lexsort((src_lengths, tgt_lengths))
        return pack_batches(order, sizes, max_tokens, max_sentences)
    rng = np.random.default_rng([int(seed), int(epoch)])
    permutation = rng.permutation(n)
    batches: list[np.ndarray] = []
    for start in range(0, n, chunk_size):
        chunk = permutation[start : start + chunk_size]
        # lexsort is stable: ties keep their shuffled order, so equal-length sentences mix differently every epoch.
        chunk = chunk[np.lexsort((src_lengths[chunk], tgt_lengths[chunk]))]
        batches.extend(pack_batches(chunk, sizes, max_tokens, max_sentences))
    return [batches[i] for i in rng.permutation(len(batches))]


class BatchIterator:
    """Endless, resumable stream of token-count batches over a ``TranslationDataset``.

    ``for batch in iterator`` runs over epochs without end (the training loop stops on its own budget); each batch
    carries ``epoch``, ``batch_index`` and ``last_in_epoch``. ``state_dict()`` is the position of the *next* batch,
    ``{"epoch": e, "batch_index": i, "seed": s, "num_examples": n}``; ``load_state_dict`` restores it (refusing a
    state from a different seed or dataset size). ``epoch_batches()`` iterates only the rest of the current epoch.
    """

    def __init__(
        self,
        dataset: TranslationDataset,
        *,
        max_tokens: int,
        seed: int = 0,
        shuffle: bool = True,
        chunk_size: int = 8192,
        max_sentences: int | None = None,
        epoch: int = 0,
        batch_index: int = 0,
    ):
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        if len(dataset) == 0:
            raise ValueError("BatchIterator: the dataset is empty")
        self.dataset = dataset
        self.max_tokens, self.seed, self.shuffle = max_tokens, seed, shuffle
        self.chunk_size, self.max_sentences = chunk_size, max_sentences
        self.epoch, self.batch_index = epoch, batch_index
        self._cached_epoch: int | None = None
        self._cached_batches: list[np.ndarray] = []

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The index arrays of every batch of ``epoch`` (cached for the current epoch)."""
        if self._cached_epoch != epoch:
            self._cached_batches = batch_order(
                self.dataset.src_lengths,
                self.dataset.tgt_lengths,
                max_tokens=self.max_tokens,
                seed=self.seed,
                epoch=epoch,
                shuffle=self.shuffle,
                chunk_size=self.chunk_size,
                max_sentences=self.max_sentences,
            )
            self._cached_epoch = epoch
        return self._cached_batches

    def __len__(self) -> int:
        """Batches per epoch (can differ by one or two between epochs when shuffled; this is the current one)."""
        return len(self.batches(self.epoch))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batches = self.batches(self.epoch)
        if self.batch_index >= len(batches):  # only after load_state_dict with a stale position
            self.epoch, self.batch_index = self.epoch + 1, 0
            batches = self.batches(self.epoch)
        indices = batches[self.batch_index]
        batch = self.dataset.collate(indices)
        batch.epoch, batch.batch_index = self.epoch, self.batch_index
        batch.last_in_epoch = self.batch_index == len(batches) - 1
        # The position always names the next batch: after an epoch's last batch it is (epoch + 1, 0).
        self.batch_index += 1
        if batch.last_in_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
        return batch

    def epoch_batches(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch; afterwards the position is the start of the next one."""
        while True:
            batch = next(self)
            yield batch
            if batch.last_in_epoch:
                return

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "seed": self.seed,
            "num_examples": len(self.dataset),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("epoch", "batch_index"):
            if key not in state:
                raise KeyError(f"BatchIterator state is missing {key!r} (got keys {sorted(state)})")
        if "seed" in state and state["seed"] != self.seed:
            raise ValueError(f"BatchIterator state was saved with seed {state['seed']}, this iterator has {self.seed}")
        if "num_examples" in state and state["num_examples"] != len(self.dataset):
            raise ValueError(
                f"BatchIterator state was saved for {state['num_examples']} examples, "
                f"this dataset has {len(self.dataset)}; the data changed since the checkpoint"
            )
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])


def evaluation_batches(dataset: TranslationDataset, max_tokens: int, max_sentences: int | None = None) -> list[Batch]:
    """All of ``dataset`` in length-sorted batches (no shuffling); ``batch.indices`` map rows back to the order."""
    return [
        dataset.collate(indices)
        for indices in batch_order(
            dataset.src_lengths,
            dataset.tgt_lengths,
            max_tokens=max_tokens,
            seed=0,
            epoch=0,
            shuffle=False,
            max_sentences=max_sentences,
        )
    ]


# --------------------------------------------------------------------------------------------------------------------
# 3. Language modelling: a token stream and random windows
# --------------------------------------------------------------------------------------------------------------------


def split_stream(ids: Sequence[int] | np.ndarray, train_fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream into contiguous (train, valid) int64 arrays: the first ``train_fraction`` for training."""
    ids = np.asarray(ids, dtype=np.int64)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be between 0 and 1 (exclusive), got {train_fraction}")
    if ids.ndim != 1 or len(ids) < 2:
        raise ValueError(f"the corpus has {ids.size} tokens; a language model needs at least 2 (and a lot more)")
    cut = int(math.floor(len(ids) * train_fraction))
    cut = min(max(cut, 1), len(ids) - 1)
    return ids[:cut], ids[cut:]


class LMBatcher:
    """Random contiguous windows of ``block_size`` tokens from a stream: ``x`` (B, L), ``y`` = x shifted by one.

    The windows come from a ``np.random.Generator`` seeded with ``seed``; ``state_dict()``/``load_state_dict()``
    capture the generator's state (a JSON-serialisable dict), so a resumed run draws the same windows.
    """

    def __init__(self, data: np.ndarray, *, block_size: int, batch_size: int, seed: int = 0, name: str = "train"):
        data = np.asarray(data, dtype=np.int64)
        if block_size <= 0 or batch_size <= 0:
            raise ValueError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")
        if len(data) <= block_size:
            raise ValueError(
                f"the {name} split has {len(data)} tokens, not more than block_size={block_size}: "
                f"a window needs block_size + 1 tokens; use a smaller block_size or more text"
            )
        self.data, self.block_size, self.batch_size, self.name = data, block_size, batch_size, name
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.sample()

    def sample(self, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        batch_size = batch_size or self.batch_size
        starts = self.rng.integers(0, len(self.data) - self.block_size, size=batch_size)  # (B,)
        offsets = starts[:, None] + np.arange(self.block_size)[None, :]  # (B, L)
        return self.data[offsets], self.data[offsets + 1]

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


class StreamSegment(NamedTuple):
    """One step of ``LMStreamBatcher``: x (B, T), y (B, T) = x shifted by one, and ``first``: the segment starts a
    pass over the stream (a model carrying its state from the previous segment starts from zero here)."""

    x: np.ndarray
    y: np.ndarray
    first: bool


class LMStreamBatcher:
    """The PyTorch word_language_model example's batching, for truncated backpropagation through time.

    The stream of n tokens is cut into B contiguous sub-streams, ``data[: B * (n // B)].reshape(B, n // B)`` (the
    last n mod B tokens unused); each step reads the next T = ``block_size`` columns of every row: x = columns
    [i, i + T), y = columns [i + 1, i + T + 1), so row b of step k + 1 continues row b of step k, and a recurrent model's final state of one
    step is the right initial state of the next. A pass ends at the last column (its last segment may be shorter);
    the next one starts again at column 0 with ``first`` set. The position (and the count of finished passes) is
    ``state_dict()``, so a resumed run reads exactly the segments the uninterrupted run would have read.
    """

    def __init__(self, data: np.ndarray, *, block_size: int, batch_size: int, name: str = "train"):
        data = np.asarray(data, dtype=np.int64)
        if block_size <= 0 or batch_size <= 0:
            raise ValueError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")
        columns = len(data) // batch_size
        if columns < 2:
            raise ValueError(
                f"the {name} split has {len(data)} tokens: cut into batch_size={batch_size} sub-streams, each has "
                f"{columns} token(s) and needs at least 2 (an input and its target); use a smaller batch_size"
            )
        self.streams = data[: batch_size * columns].reshape(batch_size, columns)  # (B, n // B)
        self.block_size, self.batch_size, self.name = block_size, batch_size, name
        self.position, self.passes = 0, 0

    def __iter__(self) -> Iterator[StreamSegment]:
        return self

    def __next__(self) -> StreamSegment:
        return self.sample()

    def sample(self, batch_size: int | None = None) -> StreamSegment:
        if batch_size not in (None, self.batch_size):
            raise ValueError(f"the stream is cut into {self.batch_size} sub-streams, cannot read {batch_size} rows")
        start, last = self.position, self.streams.shape[1] - 1  # last: the final column, a target only
        end = min(start + self.block_size, last)
        self.position = end
        if end == last:  # the pass is over: the next segment starts again from column 0 (and from a zero state)
            self.position, self.passes = 0, self.passes + 1
        return StreamSegment(self.streams[:, start:end], self.streams[:, start + 1 : end + 1], start == 0)

    def state_dict(self) -> dict:
        return {"position": self.position, "passes": self.passes}

    def load_state_dict(self, state: dict) -> None:
        position = int(state["position"])
        if not 0 <= position < self.streams.shape[1] - 1:
            raise ValueError(
                f"the saved stream position {position} is outside the {self.name} split's "
                f"{self.streams.shape[1]} columns: the data or batch_size changed"
            )
        self.position, self.passes = position, int(state["passes"])


def sequential_windows(data: np.ndarray, block_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping windows covering the stream once, for evaluating loss on a whole split: (x (L',), y (L',)).

    The last window may be shorter; every token after the first is predicted exactly once.
    """
    data = np.asarray(data, dtype=np.int64)
    for start in range(0, len(data) - 1, block_size):
        end = min(start + block_size, len(data) - 1)
        yield data[start:end], data[start + 1 : end + 1]
