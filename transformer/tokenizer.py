"""Tokenizers: SentencePiece subwords for translation (and subword LMs), characters for the character-level LM.

Both share one interface: ``encode(list[str]) -> list[list[int]]``, ``decode(list[list[int]]) -> list[str]``,
``vocab_size``, ``save(directory)``, ``config()`` (a JSON-able description recorded beside checkpoints), and are
loaded back with ``load_tokenizers(directory)``.

Fixed special ids (SentencePiece models; they are part of the model config and never change):

    pad = 0   padding, ignored by the loss and masked in attention
    unk = 1   unknown piece (never produced in practice: ``byte_fallback`` spells unseen characters as UTF-8 bytes)
    bos = 2   beginning of sentence, the first decoder input
    eos = 3   end of sentence, the last decoder target (and appended to sources, see transformer.data)

``encode`` returns the pieces of the text only; the batching code adds BOS/EOS. ``decode`` stops at the first EOS,
drops pad/bos, and returns detokenised text (SentencePiece's ``▁`` turned back into spaces), the form sacreBLEU wants.

Files written by ``train_sentencepiece`` into a directory (checkpoints copy the whole directory):

    tokenizer.json               kind, joint or separate, file names, vocabulary sizes, model_type,
                                 normalisation rule, byte_fallback, special ids, training options
    spm.model, spm.vocab         joint vocabulary, or
    src.model/.vocab, tgt.model/.vocab   separate source and target vocabularies
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import sentencepiece as spm

from .files import write_atomic

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = {"pad_id": PAD_ID, "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID}
METADATA_FILE = "tokenizer.json"
MODEL_TYPES = ("unigram", "bpe")


class TokenizerError(ValueError):
    """Bad input to a tokenizer (unknown character, id out of range, bad files)."""


def _check_ids(sequences: Sequence[Sequence[int]], vocab_size: int, who: str) -> None:
    for row, seq in enumerate(sequences):
        for position, token in enumerate(seq):
            if not 0 <= int(token) < vocab_size:
                raise TokenizerError(
                    f"{who}.decode: id {int(token)} at position {position} of sequence {row} is "
                    f"outside the vocabulary [0, {vocab_size})"
                )


def _check_texts(texts, who: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{who}.encode takes a list of strings, got one string; wrap it: encode([text])")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{who}.encode: item {index} is {type(text).__name__}, not str")
    return texts


class SentencePieceTokenizer:
    """A trained SentencePiece model (``.model`` file) with the fixed special ids above."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model_path: str | os.PathLike, options: dict | None = None):
        self.model_path = Path(model_path)
        if not self.model_path.exists():
            raise TokenizerError(f"SentencePiece model {self.model_path} does not exist")
        self.processor = spm.SentencePieceProcessor()
        try:
            self.processor.Load(str(self.model_path))
        except (OSError, RuntimeError) as error:
            raise TokenizerError(f"{self.model_path} is not a SentencePiece model: {error}") from None
        self.options = dict(options or {})
        found = {
            "pad_id": self.processor.pad_id(),
            "unk_id": self.processor.unk_id(),
            "bos_id": self.processor.bos_id(),
            "eos_id": self.processor.eos_id(),
        }
        if found != SPECIAL_IDS:
            raise TokenizerError(f"{self.model_path} has special ids {found}; this project requires {SPECIAL_IDS}")

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS."""
        return self.processor.encode(_check_texts(texts, "SentencePieceTokenizer"))

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        """Detokenised text of each id sequence; stops at the first EOS and ignores pad/bos."""
        cut = []
        for seq in sequences:
            seq = [int(token) for token in seq]
            if self.eos_id in seq:
                seq = seq[: seq.index(self.eos_id)]
            cut.append([token for token in seq if token not in (self.pad_id, self.bos_id)])
        _check_ids(cut, self.vocab_size, "SentencePieceTokenizer")
        return self.processor.decode(cut)

    def sample_encode(self, texts: Sequence[str], alpha: float, nbest: int, seed: int) -> list[list[int]]:
        """Token ids of each text under a *sampled* segmentation (subword regularisation, Kudo 2018): a unigram
        model draws from the ``nbest`` best segmentations (-1: the whole lattice) with probabilities proportional to
        P(segmentation)^alpha; a BPE model drops each merge with probability ``alpha`` (BPE-dropout, Provilkov et al.
        2020). Every segmentation decodes to the same text as ``encode``'s.

        The same ``seed`` gives the same segmentations: SentencePiece draws from a thread-local generator seeded
        (from the process-wide seed) when its thread first uses it, so the encoding runs on a fresh thread
        started after the seed is set, whatever ran before in this process (what makes ``--resume`` exact)."""
        texts = _check_texts(texts, "SentencePieceTokenizer")
        out: list[list[list[int]]] = []

        def run():
            spm.set_random_generator_seed(int(seed) % (1 << 32))
            out.append(
                self.processor.encode(
                    texts, enable_sampling=True, alpha=float(alpha), nbest_size=int(nbest), num_threads=1
                )
            )

        thread = threading.Thread(target=run, name="subword-sampling")
        thread.start()
        thread.join()
        if not out:
            raise TokenizerError(f"{self.model_path}: SentencePiece sampling failed (alpha={alpha}, nbest={nbest})")
        return out[0]

    def piece_id(self, piece: str) -> int | None:
        """The id of a piece of the vocabulary (e.g. a tag token), or None when it is not one."""
        piece_id = self.processor.piece_to_id(piece)
        return None if piece_id == self.unk_id and piece != self.processor.id_to_piece(self.unk_id) else piece_id

    def pieces(self, text: str) -> list[str]:
        """The subword pieces of one text (for looking at what the model sees)."""
        return self.processor.encode(text, out_type=str)

    def config(self) -> dict:
        return {
            "kind": "sentencepiece",
            "model_file": self.model_path.name,
            "vocab_size": self.vocab_size,
            **SPECIAL_IDS,
            **self.options,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Copy the .model (and .vocab) into ``directory``; returns the new model path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / self.model_path.name
        if target.resolve() != self.model_path.resolve():
            shutil.copyfile(self.model_path, target)
            vocab = self.model_path.with_suffix(".vocab")
            if vocab.exists():
                shutil.copyfile(vocab, directory / vocab.name)
        return target


def _train_one(
    sentences: Iterable[str],
    directory: Path,
    prefix: str,
    *,
    vocab_size: int,
    model_type: str,
    normalization_rule: str,
    character_coverage: float,
    input_sentence_size: int,
    seed: int,
    num_threads: int,
    user_defined_symbols: Sequence[str] = (),
) -> SentencePieceTokenizer:
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise TokenizerError(f"cannot train the {prefix!r} SentencePiece model: no non-empty training sentences")
    options = {
        "model_type": model_type,
        "requested_vocab_size": vocab_size,
        "normalization_rule": normalization_rule,
        "byte_fallback": True,
        "character_coverage": character_coverage,
        "input_sentence_size": input_sentence_size,
        "seed": seed,
    }
    if user_defined_symbols:
        options["user_defined_symbols"] = list(user_defined_symbols)
    # Train in memory (model_writer): the saved model does not embed a scratch path, so the same data and seed
    # give a byte-identical file wherever it is trained.
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)  # sentence sampling/shuffling is seeded: same data, same model
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            byte_fallback=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            normalization_rule_name=normalization_rule,
            character_coverage=character_coverage,
            # A sample of at most input_sentence_size sentences is enough for a good vocabulary and keeps
            # training to seconds; shuffle so the sample is not just the corpus head.
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            # A small corpus may not support the requested size; take what it supports instead of failing.
            hard_vocab_limit=False,
            num_threads=num_threads,
            # Pieces that are always whole tokens (a tag marking back-translated sources, see transformer.mixing).
            user_defined_symbols=list(user_defined_symbols),
            minloglevel=2,
        )
    except RuntimeError as error:
        raise TokenizerError(f"SentencePiece training of {prefix!r} failed: {error}") from None
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n" for i in range(processor.get_piece_size())
    )
    # Write beside the target, then rename: a crash never leaves half a model under the real name.
    write_atomic(directory / f"{prefix}.model", model.getvalue())
    write_atomic(directory / f"{prefix}.vocab", vocab.encode("utf-8"))
    return SentencePieceTokenizer(directory / f"{prefix}.model", options)


# Either kind, where a function takes any tokenizer.
Tokenizer = Union["SentencePieceTokenizer", "CharTokenizer"]


def train_sentencepiece(
    src_sentences: Iterable[str],
    tgt_sentences: Iterable[str] | None,
    directory: str | os.PathLike,
    *,
    joint: bool = True,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    normalization_rule: str = "nmt_nfkc",
    character_coverage: float = 1.0,
    input_sentence_size: int = 1_000_000,
    seed: int = 0,
    num_threads: int = 2,
    user_defined_symbols: Sequence[str] = (),
) -> tuple[SentencePieceTokenizer, SentencePieceTokenizer]:
    """Train SentencePiece on the training split and save it (plus ``tokenizer.json``) in ``directory``.

    ``joint=True``: one vocabulary of ``vocab_size`` from both sides (needed to share embeddings); returns the same
    tokenizer twice. ``joint=False``: separate ``src`` and ``tgt`` models of ``vocab_size`` each. With
    ``tgt_sentences=None`` (a language model) one model ``spm`` is trained on ``src_sentences``.
    ``normalization_rule`` is SentencePiece's (``nmt_nfkc`` default, ``nfkc``, ``identity``, ...); it is recorded.
    ``user_defined_symbols`` are pieces always kept whole (e.g. the tag of tagged back-translation).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = dict(
        vocab_size=vocab_size,
        model_type=model_type,
        normalization_rule=normalization_rule,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        seed=seed,
        num_threads=num_threads,
        user_defined_symbols=tuple(user_defined_symbols),
    )
    src_sentences = list(src_sentences)
    if tgt_sentences is None or joint:
        corpus = src_sentences + (list(tgt_sentences) if tgt_sentences is not None else [])
        source = target = _train_one(corpus, directory, "spm", **settings)
    else:
        source = _train_one(src_sentences, directory, "src", **settings)
        target = _train_one(tgt_sentences, directory, "tgt", **settings)
    metadata = {"kind": "sentencepiece", "joint": source is target, "src": source.config(), "tgt": target.config()}
    _write_json_atomic(directory / METADATA_FILE, metadata)
    return source, target


class CharTokenizer:
    """Characters as tokens, for character-level language modelling (tiny Shakespeare has 65).

    The vocabulary is the sorted set of characters of the training text; there are no special tokens (id i is the
    i-th character), so ``vocab_size`` equals the number of distinct characters. Encoding a character outside the
    vocabulary raises ``TokenizerError`` naming it and its position.
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise TokenizerError("CharTokenizer needs at least one character; the corpus is empty")
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise TokenizerError("CharTokenizer: the vocabulary must be distinct single characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        if not text:
            raise TokenizerError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_text(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError:
            position = next(i for i, c in enumerate(text) if c not in self.index)
            raise TokenizerError(
                f"character {text[position]!r} (U+{ord(text[position]):04X}) at position {position} "
                f"is not in the vocabulary of {self.vocab_size} characters"
            ) from None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        texts = _check_texts(texts, "CharTokenizer")
        out = []
        for row, text in enumerate(texts):
            try:
                out.append(self.encode_text(text))
            except TokenizerError as error:
                raise TokenizerError(f"text {row}: {error}") from None
        return out

    def decode_ids(self, ids: Sequence[int]) -> str:
        _check_ids([ids], self.vocab_size, "CharTokenizer")
        return "".join(self.chars[int(i)] for i in ids)

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        _check_ids(sequences, self.vocab_size, "CharTokenizer")
        return ["".join(self.chars[int(i)] for i in seq) for seq in sequences]

    def config(self) -> dict:
        return {"kind": "char", "vocab_size": self.vocab_size, "chars": "".join(self.chars)}

    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / METADATA_FILE
        _write_json_atomic(path, {"kind": "char", "src": self.config()})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        """From a ``tokenizer.json`` written by ``save`` (or the directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / METADATA_FILE
        metadata = _read_json(path)
        entry = metadata.get("src", metadata)
        if entry.get("kind") != "char" or not isinstance(entry.get("chars"), str):
            raise TokenizerError(f"{path} does not describe a character tokenizer (kind={entry.get('kind')!r})")
        return cls(list(entry["chars"]))


def load_tokenizers(directory: str | os.PathLike):
    """``(source, target)`` tokenizers from a directory written by ``train_sentencepiece`` or ``CharTokenizer.save``
    (for a language model both are the same object)."""
    directory = Path(directory)
    metadata = _read_json(directory / METADATA_FILE)
    kind = metadata.get("kind")
    if kind == "char":
        tokenizer = CharTokenizer.load(directory / METADATA_FILE)
        return tokenizer, tokenizer
    if kind != "sentencepiece":
        raise TokenizerError(f"{directory / METADATA_FILE}: unknown tokenizer kind {kind!r}")

    def one(entry: dict) -> SentencePieceTokenizer:
        options = {k: v for k, v in entry.items() if k not in ("kind", "model_file", "vocab_size", *SPECIAL_IDS)}
        return SentencePieceTokenizer(directory / entry["model_file"], options)

    source = one(metadata["src"])
    target = source if metadata.get("joint") else one(metadata["tgt"])
    return source, target


def save_tokenizers(source, target, directory: str | os.PathLike) -> None:
    """Copy a tokenizer pair (and its metadata) into ``directory``, e.g. a checkpoint directory."""
    directory = Path(directory)
    if isinstance(source, CharTokenizer):
        source.save(directory)
        return
    source.save(directory)
    if target is not source:
        target.save(directory)
    _write_json_atomic(
        directory / METADATA_FILE,
        {"kind": "sentencepiece", "joint": target is source, "src": source.config(), "tgt": target.config()},
    )


def _write_json_atomic(path: Path, value) -> None:
    write_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise TokenizerError(f"{path} does not exist (no tokenizer saved there)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenizerError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return value
