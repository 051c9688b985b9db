"""Corpora from a download cache: Multi30k, Tatoeba, tiny Shakespeare, and any parallel text you bring.

The cache directory
-------------------
``resolve_data_dir(data_dir)`` picks, in order: the ``data_dir`` argument (the CLI's ``--data-dir``), the environment
variable ``TRANSFORMER_DATA``, then ``~/.cache/transformer``. Inside it, files live under the same relative paths as
in the project's shared data folder::

    multi30k/train.de.gz  multi30k/val.en.gz  multi30k/test_2016_flickr.de.gz  ...
    tatoeba/deu-eng.zip   tatoeba/fra-eng.zip
    tinyshakespeare/input.txt

so a pre-filled (even read-only) copy of that folder works as the cache. ``fetch`` returns a cached file after
checking its SHA-256 against the sum hard-coded below, never touching the network; only a missing file is downloaded
(to a temporary file beside it, verified, then renamed into place, so an interrupted download leaves nothing behind).
A cached file whose sum differs raises ``ChecksumError`` naming the file and both sums.

Splits
------
Every loader returns ``{"train": ParallelText, "valid": ParallelText, "test": ParallelText}`` (plus the validation
reports). Multi30k has official splits (train / val / test_2016_flickr). Corpora without one (Tatoeba, your own
files) are split by ``split_corpus``: pairs are grouped by their source sentence (so a test source never appears in
training, even when the corpus repeats it with alternative translations), the groups are permuted by
``np.random.default_rng(seed)``, and whole groups fill test, then valid, then train; inside each split the corpus
order is kept. The split is a pure function of (the pairs, sizes, seed).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import DataValidationError, ValidationReport, check_line_counts, validate_pairs

log = logging.getLogger("transformer.datasets")

DATA_DIR_ENV = "TRANSFORMER_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/transformer")

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
# manythings.org republishes these archives from time to time; a newer archive will not match the sums below and is
# refused (ChecksumError) rather than used unverified. Put a copy with a known sum in the cache instead.
TATOEBA_URL = "https://www.manythings.org/anki/"
# GLUE's SST-2 (Socher et al. 2013; Wang et al. 2019) is published only inside this archive: unpack it and gzip
# train.tsv (``gzip -9n``) into <cache>/sst2/ to match the sums below (the loader reads, never downloads, it).
SST2_URL = "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip"

# SHA-256 of every file the loaders know, keyed by path relative to the cache directory.
SHA256 = {
    "multi30k/test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "multi30k/test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "multi30k/train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "multi30k/train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "multi30k/val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "multi30k/val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "tatoeba/deu-eng.zip": "b7688f84f99fa33c17397c14d8bd9cef1fdeb2ee0bf50074767023aee8926e28",
    "tatoeba/fra-eng.zip": "16c4f7d0df9e7c5e6c54cdb0447f3f4a18a55052ff5e2e0b27dd4a06c0e49d04",
    "sst2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "sst2/test.tsv": "69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13",
    "sst2/train.tsv.gz": "1c4843303462f8f93e006ff618a9e61d207468cafd030046d7d7fd6b78af342b",
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "wikitext2/wiki.train.tokens.gz": "0c202e0b5d919429261b7291d9b5998f0db680c0a6700c0ff2a886d0abe055d4",
    # SAMSum as the Hugging Face `datasets` library exports it (JSON Lines); see load_samsum.
    "samsum/train.json.gz": "a74cc67df20d134560280b6462ab9331cf4a5e885d27804f095eec24b7e90602",
    "samsum/validation.json": "9bbd4eaf320ce38ea7a7656d09b526fc97bd7aa6c4beb532b6abf4e9cc2a585d",
    "samsum/test.json": "80b33150b15da3208b8cc8ea89c992380138e7ea1b739168807036694cd22683",
    # DailyDialog: the three split archives inside the official ijcnlp_dailydialog.zip; see load_dailydialog_dialogues.
    "dailydialog/train.zip": "6191257f8250da0e045bfd1d017645e15b2358df975ec4c5c431a5a1f99662a4",
    "dailydialog/validation.zip": "f068cf7526a56ab5f26e99b74ce9edbc2766f7b060a3c6cef035920b0dd28153",
    "dailydialog/test.zip": "5f9526a5ce4b8af4ca237aa3ff38cbf03becbc596c70b0974d7f5f9af2ea0615",
}

MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
MULTI30K_LANGUAGES = ("de", "en")
TATOEBA_ARCHIVES = {"de": ("deu-eng.zip", "deu.txt"), "fr": ("fra-eng.zip", "fra.txt")}

Fetcher = Callable[[str, Path], None]  # fetcher(url, destination): write the resource at url to destination


class ChecksumError(RuntimeError):
    """A cached or downloaded file does not have the expected SHA-256."""


class DownloadError(RuntimeError):
    """A file is missing from the cache and could not be downloaded."""


# --------------------------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$TRANSFORMER_DATA``, else ``~/.cache/transformer`` (user-expanded)."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def urllib_fetcher(url: str, destination: Path) -> None:
    """Default fetcher: stream ``url`` (https://, http:// or file://) into ``destination``."""
    with urllib.request.urlopen(url, timeout=60) as response, open(destination, "wb") as out:
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)


def verify(path: Path, expected: str | None, label: str | None = None) -> None:
    """Raise ``ChecksumError`` naming the file (``label`` or ``path``) and both sums unless they agree."""
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(
            f"{label or path}: SHA-256 mismatch: expected {expected}, got {actual}. The file is corrupt or a different "
            f"version; delete it to download it again (or restore a good copy)."
        )


def fetch(
    relative_path: str,
    url: str,
    *,
    data_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    fetcher: Fetcher | None = None,
) -> Path:
    """The verified local path of ``relative_path`` in the cache, downloading it from ``url`` only if missing.

    ``sha256`` defaults to the known sum in ``SHA256`` (``None`` there means unverified). A present file is only
    read, so a read-only cache works.
    """
    root = resolve_data_dir(data_dir)
    path = root / relative_path
    expected = sha256 if sha256 is not None else SHA256.get(relative_path)
    if path.exists():
        verify(path, expected)
        return path

    fetcher = fetcher or urllib_fetcher
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(handle)
    except OSError as error:
        raise DownloadError(
            f"{path} is not in the cache and the cache directory {root} is not writable ({error}); "
            f"set --data-dir or {DATA_DIR_ENV} to a writable directory or a filled cache"
        ) from error
    temporary = Path(temporary_name)
    try:
        log.info("downloading %s -> %s", url, path)
        try:
            fetcher(url, temporary)
        except Exception as error:  # network errors come in many types; all mean the same to the user
            raise DownloadError(
                f"{path} is not in the cache and downloading {url} failed: {error}. Without a network, copy the "
                f"file to {path} (or point --data-dir / {DATA_DIR_ENV} at a filled cache)"
            ) from error
        verify(temporary, expected, label=f"{path} (downloaded from {url})")
        os.replace(temporary, path)  # atomic: the cache never holds a half-written file under the real name
    finally:
        temporary.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Reading text
# --------------------------------------------------------------------------------------------------------------------


class TextDecodeError(DataValidationError):
    """A line is not valid UTF-8 (the message names the file and the 1-based line number)."""


def _open_binary(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def decode_lines(raw: bytes, name: str, *, on_bad: str = "error") -> list[str | None]:
    """Split bytes into lines (``\\n``; a final newline does not start a new line; ``\\r`` is left for stripping)
    and decode each as UTF-8. An invalid line raises ``TextDecodeError`` naming ``name`` and the line, or with
    ``on_bad="filter"`` comes back as ``None`` so validation can report and drop its pair."""
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first sentence
        raw = raw[3:]
    pieces = raw.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    lines: list[str | None] = []
    for number, piece in enumerate(pieces, start=1):
        try:
            lines.append(piece.decode("utf-8"))
        except UnicodeDecodeError as error:
            if on_bad == "error":
                raise TextDecodeError(
                    f"{name}: line {number} is not valid UTF-8 ({error.reason} at byte "
                    f"{error.start} of the line: {piece[max(0, error.start - 10) : error.end + 10]!r})"
                ) from None
            lines.append(None)
    return lines


def read_lines(path: str | os.PathLike, *, on_bad: str = "error") -> list[str | None]:
    """Lines of a text file (gzip-compressed if its name ends in ``.gz``); see ``decode_lines``."""
    path = Path(path)
    with _open_binary(path) as handle:
        raw = handle.read()
    return decode_lines(raw, str(path), on_bad=on_bad)


# --------------------------------------------------------------------------------------------------------------------
# Parallel text and splits
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ParallelText:
    """Aligned sentences: ``src[i]`` translates to ``tgt[i]``."""

    src: list[str]
    tgt: list[str]
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    lines: list[int] | None = None  # lines[i]: the 1-based line of pair i in ``origin`` (None: i + 1)
    origin: str = ""  # the file(s) the pairs were read from, for messages

    def __post_init__(self):
        if len(self.src) != len(self.tgt):
            raise ValueError(f"ParallelText: {len(self.src)} source sentences but {len(self.tgt)} target sentences")
        if self.lines is not None and len(self.lines) != len(self.src):
            raise ValueError(f"ParallelText: {len(self.src)} pairs but {len(self.lines)} line numbers")

    def line_of(self, i: int) -> int:
        return self.lines[i] if self.lines is not None else i + 1

    def subset(self, indices) -> "ParallelText":
        return ParallelText(
            [self.src[i] for i in indices],
            [self.tgt[i] for i in indices],
            self.src_lang,
            self.tgt_lang,
            [self.line_of(i) for i in indices],
            self.origin,
        )

    def __len__(self) -> int:
        return len(self.src)


@dataclass
class Corpus:
    """The splits of a corpus and the validation report of each."""

    splits: dict[str, ParallelText]
    reports: dict[str, ValidationReport] = field(default_factory=dict)
    name: str = "corpus"
    files: list[Path] = field(default_factory=list)  # what was read: its identity is recorded in a run

    def __getitem__(self, split: str) -> ParallelText:
        if split not in self.splits:
            raise KeyError(f"{self.name} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]

    def summary(self) -> str:
        return "\n".join(report.summary() for report in self.reports.values())


@dataclass
class ValidationOptions:
    """Limits applied by ``transformer.data.validate_pairs`` (see there); ``on_bad`` is ``"error"`` or
    ``"filter"``. Evaluation splits are never length-filtered (their references must stay complete): only their
    empty/undecodable pairs are checked."""

    max_tokens: int | None = 250
    max_chars: int | None = None
    max_ratio: float | None = 9.0
    on_bad: str = "error"

    def for_split(self, split: str) -> dict:
        if split == "train":
            return {
                "max_tokens": self.max_tokens,
                "max_chars": self.max_chars,
                "max_ratio": self.max_ratio,
                "on_bad": self.on_bad,
            }
        return {"max_tokens": None, "max_chars": None, "max_ratio": None, "on_bad": self.on_bad}


def _fraction_or_count(size: int | float, total: int, what: str) -> int:
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{what} as a fraction must be in [0, 1), got {size}")
        return int(round(size * total))
    if size < 0:
        raise ValueError(f"{what} must not be negative, got {size}")
    return int(size)


def split_corpus(
    pairs: ParallelText, *, valid_size: int | float = 0.05, test_size: int | float = 0.05, seed: int = 0
) -> dict[str, ParallelText]:
    """Seeded train/valid/test split of a corpus without one (see the module docstring for the exact rule).

    Sizes are counts (int) or fractions of the pairs (float); because whole source-sentence groups move together,
    a split can exceed its size by the last group's size.
    """
    total = len(pairs)
    n_test = _fraction_or_count(test_size, total, "test_size")
    n_valid = _fraction_or_count(valid_size, total, "valid_size")
    if n_test + n_valid >= total:
        raise ValueError(f"cannot split {total} pairs into test={n_test}, valid={n_valid} and a non-empty train split")

    group_of: dict[str, int] = {}
    group_ids = np.array([group_of.setdefault(s, len(group_of)) for s in pairs.src], dtype=np.int64)  # (N,)
    group_sizes = np.bincount(group_ids, minlength=len(group_of))
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(group_of), dtype=np.int64)  # 0 train, 1 valid, 2 test
    filled = {2: 0, 1: 0}
    for group in rng.permutation(len(group_of)):
        for split, wanted in ((2, n_test), (1, n_valid)):
            if filled[split] < wanted:
                assignment[group] = split
                filled[split] += int(group_sizes[group])
                break
    pair_split = assignment[group_ids]  # (N,)
    result = {}
    for name, code in (("train", 0), ("valid", 1), ("test", 2)):
        result[name] = pairs.subset(np.flatnonzero(pair_split == code))
    if len(result["train"]) == 0:
        raise ValueError(f"splitting {total} pairs left no training pairs; use smaller valid/test sizes")
    return result


def load_parallel_files(
    src_path: str | os.PathLike,
    tgt_path: str | os.PathLike,
    *,
    src_lang: str = "src",
    tgt_lang: str = "tgt",
    name: str | None = None,
    validation: ValidationOptions | None = None,
    split: str = "train",
) -> tuple[ParallelText, ValidationReport]:
    """Two aligned text files (optionally ``.gz``), one sentence per line, validated (see ``validate_pairs``)."""
    validation = validation or ValidationOptions()
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src_lines = read_lines(src_path, on_bad=validation.on_bad)
    tgt_lines = read_lines(tgt_path, on_bad=validation.on_bad)
    check_line_counts(str(src_path), len(src_lines), str(tgt_path), len(tgt_lines))
    src, tgt, report = validate_pairs(
        src_lines,
        tgt_lines,
        name=name or f"{src_path.name} / {tgt_path.name}",
        src_name=str(src_path),
        tgt_name=str(tgt_path),
        **validation.for_split(split),
    )
    return ParallelText(src, tgt, src_lang, tgt_lang, report.kept_lines, f"{src_path} / {tgt_path}"), report


def read_tsv_pairs(
    raw_lines: Sequence[str | None],
    name: str,
    *,
    src_column: int,
    tgt_column: int,
    validation: ValidationOptions,
    split: str = "train",
    src_lang: str = "src",
    tgt_lang: str = "tgt",
) -> tuple[ParallelText, ValidationReport]:
    """Pairs from TSV lines: columns ``src_column`` and ``tgt_column`` (0-based); extra columns (Tatoeba's
    attribution) are ignored; a line with too few columns is bad (reported with its line number)."""
    needed = max(src_column, tgt_column) + 1
    src: list[str | None] = []
    tgt: list[str | None] = []
    malformed = []
    for index, line in enumerate(raw_lines):
        columns = None if line is None else line.rstrip("\r").split("\t")
        if columns is not None and len(columns) < needed:
            malformed.append(index)
            src.append("")
            tgt.append("")
            continue
        src.append(None if columns is None else columns[src_column])
        tgt.append(None if columns is None else columns[tgt_column])
    src_kept, tgt_kept, report = validate_pairs(
        src,
        tgt,
        name=name,
        src_name=f"{name} column {src_column + 1}",
        tgt_name=f"{name} column {tgt_column + 1}",
        malformed=malformed,
        **validation.for_split(split),
    )
    return ParallelText(src_kept, tgt_kept, src_lang, tgt_lang, report.kept_lines, name), report


def load_tsv(
    path: str | os.PathLike,
    *,
    src_column: int = 0,
    tgt_column: int = 1,
    src_lang: str = "src",
    tgt_lang: str = "tgt",
    validation: ValidationOptions | None = None,
    split: str = "train",
) -> tuple[ParallelText, ValidationReport]:
    """A TSV file (optionally ``.gz``) of sentence pairs, validated."""
    validation = validation or ValidationOptions()
    lines = read_lines(path, on_bad=validation.on_bad)
    return read_tsv_pairs(
        lines,
        str(path),
        src_column=src_column,
        tgt_column=tgt_column,
        validation=validation,
        split=split,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
    )


def _split_then_validate(
    pairs_raw: ParallelText, validation: ValidationOptions, name: str, *, valid_size, test_size, seed
) -> Corpus:
    """Split already-checked pairs, then apply the training-only length limits to the train split."""
    splits = split_corpus(pairs_raw, valid_size=valid_size, test_size=test_size, seed=seed)
    train = splits["train"]
    src, tgt, report = validate_pairs(
        train.src,
        train.tgt,
        name=f"{name} train (length limits)",
        line_numbers=[train.line_of(i) for i in range(len(train))],
        **validation.for_split("train"),
    )
    splits["train"] = ParallelText(src, tgt, train.src_lang, train.tgt_lang, report.kept_lines, train.origin)
    return Corpus(splits=splits, reports={"train": report}, name=name)


def load_parallel_corpus(
    *,
    src_path=None,
    tgt_path=None,
    tsv_path=None,
    src_column: int = 0,
    tgt_column: int = 1,
    src_lang: str = "src",
    tgt_lang: str = "tgt",
    validation: ValidationOptions | None = None,
    valid_size: int | float = 0.05,
    test_size: int | float = 0.05,
    seed: int = 0,
) -> Corpus:
    """Any parallel corpus without official splits: two aligned files or one TSV, validated, then split by
    ``split_corpus``. Content problems (undecodable, empty, malformed) are checked on the whole corpus first; the
    length limits apply to the training split only."""
    validation = validation or ValidationOptions()
    content_only = ValidationOptions(max_tokens=None, max_chars=None, max_ratio=None, on_bad=validation.on_bad)
    if tsv_path is not None:
        if src_path is not None or tgt_path is not None:
            raise ValueError("give either tsv_path or src_path and tgt_path, not both")
        pairs, first_report = load_tsv(
            tsv_path,
            src_column=src_column,
            tgt_column=tgt_column,
            src_lang=src_lang,
            tgt_lang=tgt_lang,
            validation=content_only,
            split="train",
        )
        name = str(tsv_path)
    elif src_path is not None and tgt_path is not None:
        pairs, first_report = load_parallel_files(
            src_path, tgt_path, src_lang=src_lang, tgt_lang=tgt_lang, validation=content_only, split="train"
        )
        name = f"{Path(src_path).name} / {Path(tgt_path).name}"
    else:
        raise ValueError("load_parallel_corpus needs tsv_path, or both src_path and tgt_path")
    corpus = _split_then_validate(pairs, validation, name, valid_size=valid_size, test_size=test_size, seed=seed)
    corpus.reports = {"all": first_report, **corpus.reports}
    corpus.files = [Path(p) for p in ((tsv_path,) if tsv_path is not None else (src_path, tgt_path))]
    return corpus


# --------------------------------------------------------------------------------------------------------------------
# Named corpora
# --------------------------------------------------------------------------------------------------------------------


def multi30k_files(*, data_dir=None, fetcher: Fetcher | None = None, base_url: str = MULTI30K_URL) -> dict[str, Path]:
    """Fetch (or find) and verify all six Multi30k task-1 files; returns {relative path: local path}."""
    paths = {}
    for split_file in MULTI30K_SPLITS.values():
        for lang in MULTI30K_LANGUAGES:
            file_name = f"{split_file}.{lang}.gz"
            relative = f"multi30k/{file_name}"
            paths[relative] = fetch(relative, base_url + file_name, data_dir=data_dir, fetcher=fetcher)
    return paths


def load_multi30k(
    src: str = "de",
    tgt: str = "en",
    *,
    data_dir=None,
    fetcher: Fetcher | None = None,
    base_url: str = MULTI30K_URL,
    validation: ValidationOptions | None = None,
) -> Corpus:
    """Multi30k task 1 (29,000 / 1,014 / 1,000 pairs) in the direction ``src -> tgt`` (``de``/``en``).

    Splits: ``train``, ``valid`` (val) and ``test`` (test_2016_flickr). Raw, cased text; stray leading/trailing
    spaces are stripped (about 40 German training lines have them) and reported.
    """
    if {src, tgt} != set(MULTI30K_LANGUAGES):
        raise ValueError(f"Multi30k has languages {MULTI30K_LANGUAGES}; got src={src!r}, tgt={tgt!r}")
    validation = validation or ValidationOptions()
    paths = multi30k_files(data_dir=data_dir, fetcher=fetcher, base_url=base_url)
    splits, reports = {}, {}
    for split, split_file in MULTI30K_SPLITS.items():
        pairs, report = load_parallel_files(
            paths[f"multi30k/{split_file}.{src}.gz"],
            paths[f"multi30k/{split_file}.{tgt}.gz"],
            src_lang=src,
            tgt_lang=tgt,
            name=f"multi30k {split}",
            validation=validation,
            split=split,
        )
        splits[split], reports[split] = pairs, report
    return Corpus(splits=splits, reports=reports, name=f"multi30k {src}-{tgt}", files=list(paths.values()))


def load_tatoeba(
    src: str = "de",
    tgt: str = "en",
    *,
    data_dir=None,
    fetcher: Fetcher | None = None,
    base_url: str = TATOEBA_URL,
    validation: ValidationOptions | None = None,
    valid_size: int | float = 2000,
    test_size: int | float = 2000,
    seed: int = 0,
) -> Corpus:
    """Tatoeba pairs as packaged by manythings.org (``deu-eng.zip`` / ``fra-eng.zip``: ``English<TAB>other``
    [``<TAB>attribution``]), in either direction, split by ``split_corpus`` (no official split exists)."""
    other = {src, tgt} - {"en"}
    if "en" not in (src, tgt) or len(other) != 1 or next(iter(other)) not in TATOEBA_ARCHIVES:
        raise ValueError(
            f"Tatoeba pairs are English with one of {sorted(TATOEBA_ARCHIVES)}; got src={src!r}, tgt={tgt!r}"
        )
    archive_name, member = TATOEBA_ARCHIVES[next(iter(other))]
    validation = validation or ValidationOptions()
    archive = fetch(f"tatoeba/{archive_name}", base_url + archive_name, data_dir=data_dir, fetcher=fetcher)
    with zipfile.ZipFile(archive) as zipped:
        if member not in zipped.namelist():
            raise DataValidationError(f"{archive}: expected a member {member!r}, found {zipped.namelist()}")
        raw = zipped.read(member)
    name = f"{archive}:{member}"
    lines = decode_lines(raw, name, on_bad=validation.on_bad)
    content_only = ValidationOptions(max_tokens=None, max_chars=None, max_ratio=None, on_bad=validation.on_bad)
    columns = (0, 1) if src == "en" else (1, 0)
    pairs, first_report = read_tsv_pairs(
        lines, name, src_column=columns[0], tgt_column=columns[1], validation=content_only, src_lang=src, tgt_lang=tgt
    )
    corpus = _split_then_validate(
        pairs, validation, f"tatoeba {src}-{tgt}", valid_size=valid_size, test_size=test_size, seed=seed
    )
    corpus.reports = {"all": first_report, **corpus.reports}
    corpus.files = [Path(archive)]
    return corpus


def cached_file(relative_path: str, *, data_dir=None, home: str = "") -> Path:
    """The verified local path of a file that has no download here (it must already be in the cache); ``home``
    says where the data set is published, for the message."""
    root = resolve_data_dir(data_dir)
    path = root / relative_path
    if not path.exists():
        raise DownloadError(
            f"{path} is not in the cache (it is not downloaded automatically{': get it from ' + home if home else ''}):"
            f" copy it there, or point --data-dir / {DATA_DIR_ENV} at a filled cache"
        )
    verify(path, SHA256.get(relative_path))
    return path


def load_tinyshakespeare(*, data_dir=None, fetcher: Fetcher | None = None, base_url: str = TINYSHAKESPEARE_URL) -> str:
    """The tiny Shakespeare text (1,115,394 characters) as one string."""
    path = fetch("tinyshakespeare/input.txt", base_url + "input.txt", data_dir=data_dir, fetcher=fetcher)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise TextDecodeError(f"{path}: line {line} is not valid UTF-8 ({error.reason})") from None


def load_text(path: str | os.PathLike) -> str:
    """Any plain-text corpus (for language modelling) as one string; invalid UTF-8 names the file and line."""
    path = Path(path)
    with _open_binary(path) as handle:
        raw = handle.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise TextDecodeError(f"{path}: line {line} is not valid UTF-8 ({error.reason})") from None


def file_identity(paths) -> dict:
    """{file name: {"bytes", "sha256"}} of the files a run read, recorded in its checkpoints so that a later
    evaluate or resume can tell whether it still reads the same data (keyed by name: a copy of the cache elsewhere
    is the same data)."""
    return {Path(p).name: {"bytes": Path(p).stat().st_size, "sha256": sha256_of(Path(p))} for p in paths}


def identity_changes(recorded: dict, current: dict) -> list[str]:
    """What differs between two ``file_identity`` records, in words (empty: the same data)."""
    changes = []
    for name in sorted(set(recorded) | set(current)):
        before, now = recorded.get(name), current.get(name)
        if before is None:
            changes.append(f"{name} was not read by the run")
        elif now is None:
            changes.append(f"{name} (read by the run) is not read now")
        elif before != now:
            changes.append(
                f"{name} changed ({before['bytes']} bytes, sha256 {before['sha256'][:12]}... when the run "
                f"read it; now {now['bytes']} bytes, sha256 {now['sha256'][:12]}...)"
            )
    return changes


def load_translation_corpus(
    name: str,
    src: str,
    tgt: str,
    *,
    data_dir=None,
    validation=None,
    seed: int = 0,
    fetcher: Fetcher | None = None,
    **paths,
) -> Corpus:
    """Dispatch by name: ``"multi30k"``, ``"tatoeba"``, or ``"files"`` (``src_path``/``tgt_path``) / ``"tsv"``
    (``tsv_path``) for your own parallel corpus; the entry point for the command line's ``prepare``."""
    if name == "multi30k":
        return load_multi30k(src, tgt, data_dir=data_dir, fetcher=fetcher, validation=validation)
    if name == "tatoeba":
        return load_tatoeba(src, tgt, data_dir=data_dir, fetcher=fetcher, validation=validation, seed=seed)
    if name in ("files", "tsv"):
        return load_parallel_corpus(src_lang=src, tgt_lang=tgt, validation=validation, seed=seed, **paths)
    raise ValueError(f"unknown corpus {name!r}; expected 'multi30k', 'tatoeba', 'files' or 'tsv'")
