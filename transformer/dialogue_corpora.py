"""Dialogue corpora from the download cache: SAMSum (dialogue -> summary) and DailyDialog (context -> response).

Both become ``datasets.Corpus`` objects of ``ParallelText`` pairs, so the encoder-decoder Transformer, its batches,
training loop and decoders serve them unchanged (``summarise.SummarisationTask``, ``dialogue.DialogueTask``).

The turns of a dialogue are joined by ``TURN_SEP`` (`` <sep> ``, one SentencePiece piece: the tasks train their
tokenizer with it as a user-defined symbol), so a model sees where a turn ends even though SentencePiece turns line
breaks into spaces.

SAMSum (Gliwa et al. 2019, CC BY-NC-ND 4.0)
    The official release is ``corpus.7z`` among the arXiv ancillary files of 1911.12237 (``SAMSUM_HOME``); the cache
    holds the same data as the Hugging Face ``datasets`` library exports it: JSON Lines of ``{"id", "dialogue",
    "summary"}`` (``samsum/train.json.gz``, ``validation.json``, ``test.json``, SHA-256 sums in
    ``datasets.SHA256``), 14,732 / 818 / 819 conversations. Turns are separated by ``\\r\\n`` or ``\\n``; training
    conversation 13828807 has an empty dialogue (reported and dropped, or refused with ``on_bad="error"``).
DailyDialog (Li et al. 2017, CC BY-NC-SA 4.0)
    The three split archives inside the official ``ijcnlp_dailydialog.zip`` (``DAILYDIALOG_HOME``), as in the cache
    (``dailydialog/{train,validation,test}.zip``): one dialogue a line, each utterance followed by ``__eou__``, with
    act and emotion label files of one integer an utterance. Line 7,852 of the training dialogues has 12 utterances
    but 11 labels: such a line is reported (the labels are not used for response generation, so its text is kept;
    ``on_bad="error"`` refuses it). Each turn after the first is one example: the preceding ``context_turns`` turns
    -> the turn.
"""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from pathlib import Path

from .console import log
from .data import DataValidationError, validate_pairs
from .datasets import Corpus, ParallelText, ValidationOptions, cached_file, decode_lines

TURN_SEP = "<sep>"
SAMSUM_HOME = "https://arxiv.org/src/1911.12237v2/anc/corpus.7z (official); the Hugging Face 'samsum' export"
DAILYDIALOG_HOME = "http://yanran.li/files/ijcnlp_dailydialog.zip"
SAMSUM_FILES = {"train": "train.json.gz", "valid": "validation.json", "test": "test.json"}
DAILYDIALOG_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
EOU = "__eou__"


def join_turns(turns) -> str:
    """The model's text of a list of turns: the turns joined by the separator token."""
    return f" {TURN_SEP} ".join(t.strip() for t in turns)


def split_turns(text: str) -> list[str]:
    """The turns of a joined text (the inverse of ``join_turns``); empty turns are left out."""
    return [t.strip() for t in text.split(TURN_SEP) if t.strip()]


def _first_lines(lines, count=5):
    return ", ".join(str(n) for n in lines[:count]) + (" ..." if len(lines) > count else "")


# ---------------------------------------------------------------------------------------------------------- SAMSum
def read_samsum(path: Path, name: str) -> tuple[list[str | None], list[str | None], list[str]]:
    """(dialogues with turns joined by the separator, summaries, ids) of a SAMSum JSON Lines file; a line that is
    not a JSON object with string ``dialogue`` and ``summary`` names the file and the line."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    dialogues: list[str | None] = []
    summaries: list[str | None] = []
    ids = []
    for number, line in enumerate(decode_lines(raw, name), start=1):
        if line is None or not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataValidationError(f"{name}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("dialogue", "summary")):
            raise DataValidationError(f"{name}: line {number} is not an object with string 'dialogue' and 'summary'")
        dialogues.append(join_turns(t for t in row["dialogue"].replace("\r\n", "\n").split("\n") if t.strip()))
        summaries.append(row["summary"])
        ids.append(str(row.get("id", number)))
    return dialogues, summaries, ids


def load_samsum(*, data_dir=None, validation: ValidationOptions | None = None) -> Corpus:
    """SAMSum's three splits as (dialogue -> summary) pairs, validated (``validate_pairs``: an empty dialogue or
    summary is reported with its line and id, then dropped, or refused with ``on_bad="error"``)."""
    validation = validation or ValidationOptions(max_tokens=None, max_ratio=None, on_bad="filter")
    splits, reports, files = {}, {}, []
    for split, file_name in SAMSUM_FILES.items():
        path = cached_file(f"samsum/{file_name}", data_dir=data_dir, home=SAMSUM_HOME)
        files.append(path)
        dialogues, summaries, ids = read_samsum(path, str(path))
        src, tgt, report = validate_pairs(
            dialogues,
            summaries,
            name=f"samsum {split}",
            src_name=f"{path} (dialogue)",
            tgt_name=f"{path} (summary)",
            **validation.for_split(split),
        )
        dropped = sorted(n for lines in report.dropped.values() for n in lines)
        if dropped:
            log.warning(
                f"samsum {split}: the dropped conversation(s) have id " + ", ".join(ids[n - 1] for n in dropped)
            )
        splits[split] = ParallelText(src, tgt, "dialogue", "summary", report.kept_lines, str(path))
        reports[split] = report
    return Corpus(splits=splits, reports=reports, name="samsum", files=files)


SPEAKER = re.compile(r"^[^:]{1,40}:\s*")  # SAMSum's "Amanda: " before each turn


def training_utterances(corpus: str, *, data_dir=None) -> tuple[list[str], Path]:
    """(texts, file) of a dialogue corpus's TRAINING split as plain English for masked-LM pre-training, one
    utterance a text (never its validation or test dialogues): DailyDialog's utterances; SAMSum's turns without their
    speaker prefix (a classifier never reads one) and the lines of its summaries."""
    if corpus == "dailydialog":
        split = DAILYDIALOG_SPLITS["train"]
        path = cached_file(f"dailydialog/{split}.zip", data_dir=data_dir, home=DAILYDIALOG_HOME)
        dialogues, _ = read_dailydialog(path, split)
        return [u.strip() for dialogue in dialogues for u in dialogue if u.strip()], path
    if corpus != "samsum":
        raise ValueError(f"no dialogue corpus {corpus!r}: dailydialog or samsum")
    path = cached_file(f"samsum/{SAMSUM_FILES['train']}", data_dir=data_dir, home=SAMSUM_HOME)
    texts: list[str] = []
    for dialogue, summary in zip(*read_samsum(path, str(path))[:2]):
        texts += [SPEAKER.sub("", turn).strip() for turn in split_turns(dialogue or "")]
        texts += (summary or "").split("\n")
    return [t.strip() for t in texts if t.strip()], path


# ---------------------------------------------------------------------------------------------------------- DailyDialog
def read_dailydialog(archive: Path, split: str, *, on_bad: str = "filter") -> tuple[list[list[str]], list[int]]:
    """(dialogues as lists of utterances, their 1-based lines) of one DailyDialog split archive. A line whose
    utterance count differs from its act/emotion label counts is reported (refused with ``on_bad="error"``); empty
    utterances are left out and reported."""
    members = {kind: f"{split}/dialogues{kind}_{split}.txt" for kind in ("", "_act", "_emotion")}
    with zipfile.ZipFile(archive) as zipped:
        missing = [m for m in members.values() if m not in zipped.namelist()]
        if missing:
            raise DataValidationError(f"{archive}: expected members {missing}, found {zipped.namelist()}")
        texts = {kind: decode_lines(zipped.read(m), f"{archive}:{m}") for kind, m in members.items()}
    name = f"{archive}:{members['']}"
    dialogues, lines, mismatched, empty = [], [], [], []
    for number, line in enumerate(texts[""], start=1):
        assert line is not None  # decode_lines raises on bad UTF-8 by default
        pieces = [u.strip() for u in line.split(EOU)]
        if pieces and pieces[-1] == "":
            pieces.pop()  # every utterance is followed by __eou__: the text after the last one is empty
        counts = {
            kind: len((texts[kind][number - 1] or "").split()) if number <= len(texts[kind]) else 0
            for kind in members
            if kind
        }
        if any(c != len(pieces) for c in counts.values()):
            mismatched.append((number, len(pieces), counts["_act"]))
        utterances = [u for u in pieces if u]
        if len(utterances) < len(pieces):
            empty.append(number)
        if len(utterances) >= 2:  # a response needs a turn before it
            dialogues.append(utterances)
            lines.append(number)
    if mismatched:
        first = mismatched[0]
        message = (
            f"{name}: {len(mismatched)} line(s) whose utterance count differs from the act/emotion label count "
            f"(line {first[0]}: {first[1]} utterances, {first[2]} labels)"
        )
        if on_bad == "error":
            raise DataValidationError(message)
        log.warning(message + "; the labels are not used for response generation, so the text is kept")
    if empty:
        log.warning(f"{name}: {len(empty)} line(s) with an empty utterance, left out (lines {_first_lines(empty)})")
    return dialogues, lines


def dialogue_examples(dialogues, lines, context_turns: int, origin: str) -> ParallelText:
    """Each turn after the first as one pair: the ``context_turns`` turns before it, joined by the separator ->
    the turn. ``lines`` (the dialogue's line for each pair) point messages at the file."""
    if context_turns < 1:
        raise ValueError(f"context_turns must be >= 1, got {context_turns}")
    src, tgt, where = [], [], []
    for turns, line in zip(dialogues, lines):
        for i in range(1, len(turns)):
            src.append(join_turns(turns[max(0, i - context_turns) : i]))
            tgt.append(turns[i])
            where.append(line)
    return ParallelText(src, tgt, "context", "response", where, origin)


def load_dailydialog(*, data_dir=None, context_turns: int = 3, on_bad: str = "filter") -> Corpus:
    """DailyDialog's three splits as (preceding ``context_turns`` turns -> response) pairs (see the module)."""
    splits, files = {}, []
    for split, archive_split in DAILYDIALOG_SPLITS.items():
        path = cached_file(f"dailydialog/{archive_split}.zip", data_dir=data_dir, home=DAILYDIALOG_HOME)
        files.append(path)
        dialogues, lines = read_dailydialog(path, archive_split, on_bad=on_bad)
        splits[split] = dialogue_examples(dialogues, lines, context_turns, f"{path}:{archive_split}")
    return Corpus(splits=splits, name=f"dailydialog (context {context_turns} turns)", files=files)
