"""Text classification (GLUE SST-2) and the masked-language-model pre-training of its encoder: two tasks the one
training loop (train.py) drives, with the same protocol as TranslationTask and LMTask (tasks.py).

ClassifyTask: labelled texts (``text<TAB>label`` files, one a line: SST-2's format) -> [CLS] + sub-words, cut to
``model.max_len`` (said, never silent) -> token-count batches (data.BatchIterator) -> a TextEncoder with a pooled
classification head; the loss is the summed cross-entropy of the labels, normalised per text by the loop;
validation reports loss, accuracy and macro-F1 on the dev set, accuracy the metric kept for the best checkpoint.

MLMTask: unlabelled texts (WikiText-2's training lines and SST-2's training sentences, or a file of your own) cut
into pieces of at most ``model.max_len - 1`` sub-words -> the same batches, each masked afresh by BERT's 80/10/10
rule (classifier.mask_tokens) from a generator the checkpoint saves (exact resume); the loss is the cross-entropy
at the chosen positions only, normalised per predicted piece.

Bad input is refused with its file and line: a label outside ``data.labels`` or missing, an empty text
(``data.on_bad = "filter"`` drops those and says how many and where).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

import npgrad as ng
from npgrad import functional as F

from .classifier import EncoderConfig, TextEncoder, mask_tokens
from .config import ConfigError, check_keys, check_numbers
from .console import log
from .data import ON_BAD_CHOICES, BatchIterator, DataValidationError, evaluation_batches
from .datasets import cached_file, file_identity, read_lines
from .dialogue_corpora import training_utterances
from .tasks import model_settings, prepare_lm_tokenizer, token_loss, tokenizer_files
from .tokenizer import Tokenizer

CLASSIFY_DATA_DEFAULTS = dict(
    corpus="sst2",  # sst2 (from the cache) | tsv (train_path, valid_path)
    data_dir="",
    train_path="",
    valid_path="",
    header=True,  # the first line of each file names the columns
    labels=["0", "1"],  # the label column's values, in class order
    label_names=["negative", "positive"],  # what predict prints for each class
    on_bad="error",  # an empty text: error | filter (dropped, reported)
)
MLM_DATA_DEFAULTS = dict(
    # wikitext2: the training lines of WikiText-2; sst2: its training sentences; dailydialog / samsum: the utterances
    # (and SAMSum's summaries) of their training dialogues, English conversation
    sources=["wikitext2", "sst2"],
    text_path="",  # a file of texts of your own, one a line (added to the sources)
    data_dir="",
    mask_prob=0.15,
    valid_texts=1000,  # held out (a seeded draw) to measure the masked-LM loss
    split_seed=0,
)
SST2_FILES = {"train": "sst2/train.tsv.gz", "valid": "sst2/dev.tsv"}
MLM_SOURCES = ("wikitext2", "sst2", "dailydialog", "samsum")


# ============================================================================================== reading the data
@dataclass
class LabelledTexts:
    texts: list[str]
    labels: np.ndarray  # (N,) int64 class indices
    lines: list[int]  # the 1-based file line of each text
    origin: str


def read_labelled_tsv(
    path: str | os.PathLike, labels: Sequence[str], *, header: bool = True, on_bad: str = "error"
) -> LabelledTexts:
    """``text<TAB>label`` lines (the label after the last tab; SST-2's trailing space before the tab is trimmed).
    A missing or unknown label is refused with the file and line; an empty text too, or with ``on_bad="filter"``
    dropped and reported."""
    lines = read_lines(path)
    index = {label: k for k, label in enumerate(labels)}
    texts, classes, numbers, empty = [], [], [], []
    for number, line in enumerate(lines, start=1):
        if header and number == 1:
            continue
        assert line is not None  # read_lines raised on invalid UTF-8
        line = line.rstrip("\r")
        if not line.strip():
            raise DataValidationError(f"{path}: line {number} is blank; expected text<TAB>label")
        text, tab, label = line.rpartition("\t")
        label = label.strip()
        if not tab:
            raise DataValidationError(f"{path}: line {number} has no label (expected text<TAB>label, found no tab)")
        if not label:
            raise DataValidationError(f"{path}: line {number}: the label is missing (nothing after the tab)")
        if label not in index:
            raise DataValidationError(
                f"{path}: line {number}: label {label!r} is not one of the labels {list(labels)} (data.labels)"
            )
        text = text.strip()
        if not text:
            if on_bad == "error":
                raise DataValidationError(
                    f'{path}: line {number}: the text is empty (data.on_bad="filter" drops such lines)'
                )
            empty.append(number)
            continue
        texts.append(text)
        classes.append(index[label])
        numbers.append(number)
    if empty:
        log.warning(f"{path}: {len(empty)} line(s) with an empty text dropped (first: line {empty[0]})")
    if not texts:
        raise DataValidationError(f"{path}: no labelled text")
    return LabelledTexts(texts, np.asarray(classes, dtype=np.int64), numbers, str(path))


def classify_data_settings(section: dict) -> dict:
    check_keys("data", section, CLASSIFY_DATA_DEFAULTS)
    data = check_numbers("data", {**CLASSIFY_DATA_DEFAULTS, **section})
    if data["on_bad"] not in ON_BAD_CHOICES:
        raise ConfigError(f"[data] on_bad must be one of {', '.join(ON_BAD_CHOICES)}, got {data['on_bad']!r}")
    labels, names = data["labels"], data["label_names"]
    if not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels))) != len(labels):
        raise ConfigError(f"[data] labels must be a list of at least two distinct labels, got {labels!r}")
    data["labels"] = [str(label) for label in labels]
    if not isinstance(names, list) or len(names) != len(labels):
        raise ConfigError(f"[data] label_names must name each of the {len(labels)} labels, got {names!r}")
    if data["corpus"] not in ("sst2", "tsv"):
        raise ConfigError(f"[data] corpus must be sst2 or tsv (train_path, valid_path), got {data['corpus']!r}")
    if data["corpus"] == "tsv" and not (data["train_path"] and data["valid_path"]):
        raise ConfigError('[data] corpus = "tsv" needs train_path and valid_path (text<TAB>label files)')
    return data


def classify_files(data: dict) -> dict[str, Path]:
    """{"train", "valid"}: SST-2 from the cache (checksummed; GLUE's public archive is datasets.SST2_URL) or the
    configured files."""
    if data["corpus"] == "sst2":
        return {split: cached_file(name, data_dir=data["data_dir"] or None) for split, name in SST2_FILES.items()}
    return {"train": Path(data["train_path"]), "valid": Path(data["valid_path"])}


def load_labelled(data: dict, split: str) -> LabelledTexts:
    path = classify_files(data)[split]
    return read_labelled_tsv(path, data["labels"], header=bool(data["header"]), on_bad=data["on_bad"])


# ============================================================================================== encoding, batches
@dataclass
class TextBatch:
    ids: np.ndarray  # (B, L) [CLS] + pieces, padded
    labels: np.ndarray  # (B,) class indices (-1: none)
    indices: np.ndarray  # (B,) rows of the dataset
    epoch: int = 0
    batch_index: int = 0
    last_in_epoch: bool = False


class TextDataset:
    """Encoded texts ([CLS] first) for data.BatchIterator / evaluation_batches: their lengths and a collate."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: np.ndarray | None = None, pad_id: int = 0):
        self.ids = [np.asarray(x, dtype=np.int64) for x in ids]
        self.labels = np.full(len(self.ids), -1, dtype=np.int64) if labels is None else np.asarray(labels)
        self.pad_id = pad_id
        self.src_lengths = np.array([len(x) for x in self.ids], dtype=np.int64)  # (N,)
        self.tgt_lengths = np.ones(len(self.ids), dtype=np.int64)  # batching sorts by (tgt, src): src alone

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, indices) -> TextBatch:
        indices = np.asarray(indices, dtype=np.int64)
        out = np.full((len(indices), int(self.src_lengths[indices].max())), self.pad_id, dtype=np.int64)
        for row, i in enumerate(indices):
            out[row, : len(self.ids[i])] = self.ids[i]
        return TextBatch(out, self.labels[indices], indices)


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_len: int, cls_id: int, where=None):
    """[CLS] + the pieces of each text, cut to ``max_len`` positions; the cut is said with the count and the first
    text's place (``where(i)``: e.g. "line 12 of train.tsv"), never done silently. Returns the id lists."""
    keep = max_len - 1
    encoded = tokenizer.encode(list(texts))
    cut = [i for i, ids in enumerate(encoded) if len(ids) > keep]
    if cut:
        place = where(cut[0]) if where else f"text {cut[0] + 1}"
        log.warning(
            f"{len(cut)} text(s) longer than model.max_len={max_len} positions ({keep} pieces after [CLS]) were "
            f"truncated to fit (first: {place})"
        )
    return [[cls_id] + ids[:keep] for ids in encoded]


def encode_labelled(tokenizer: Tokenizer, texts: LabelledTexts, cfg: EncoderConfig) -> TextDataset:
    """Labelled texts as a TextDataset for ``cfg``'s model (cuts said with their file line)."""
    where = lambda i: f"line {texts.lines[i]} of {texts.origin}"  # noqa: E731
    ids = encode_texts(tokenizer, texts.texts, cfg.max_len, cfg.cls_id, where)
    return TextDataset(ids, texts.labels, cfg.pad_id)


def classification_scores(gold: np.ndarray, predicted: np.ndarray, num_labels: int) -> dict:
    """Accuracy, macro-F1 (the mean over classes of 2PR/(P+R), a class never predicted nor present scoring 0), per
    class precision/recall/F1 and the confusion matrix (rows: gold class, columns: predicted class)."""
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (gold, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count, gold_count = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(num_labels), where=predicted_count > 0)
    recall = np.divide(true_positive, gold_count, out=np.zeros(num_labels), where=gold_count > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_labels), where=denominator > 0)
    return {
        "accuracy": float(true_positive.sum() / max(len(gold), 1)),
        "macro_f1": float(f1.mean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "confusion": confusion.tolist(),
    }


def text_batches(dataset: TextDataset, max_tokens: int) -> list[TextBatch]:
    """All of ``dataset`` in length-sorted batches of at most ``max_tokens`` padded tokens (data.evaluation_batches)."""
    return cast(list[TextBatch], evaluation_batches(dataset, max_tokens))  # type: ignore[arg-type]


def predict_probabilities(model: TextEncoder, dataset: TextDataset, max_tokens: int = 4096) -> np.ndarray:
    """Class probabilities (N, K) of every text of ``dataset``, in its order (eval mode, no gradients)."""
    model.eval()
    out = np.zeros((len(dataset), model.config.num_labels), dtype=np.float64)
    with ng.no_grad():
        for batch in text_batches(dataset, max_tokens):
            out[batch.indices] = F.softmax(model(batch.ids), axis=-1).data
    return out


def evaluate_classifier(model: TextEncoder, dataset: TextDataset, max_tokens: int = 4096) -> dict:
    """Loss (mean cross-entropy), accuracy, macro-F1, per-class scores and the confusion matrix of a labelled set."""
    return probability_scores(dataset.labels, predict_probabilities(model, dataset, max_tokens))


def probability_scores(gold: np.ndarray, probabilities: np.ndarray) -> dict:
    """The scores of class probabilities (N, K) against gold labels (N,): the loss (mean -log p(gold)) and
    classification_scores of the most probable class (ties go to the lower label index)."""
    loss = float(-np.log(np.maximum(probabilities[np.arange(len(gold)), gold], 1e-300)).mean())
    return {"loss": loss, **classification_scores(gold, probabilities.argmax(axis=1), probabilities.shape[1])}


# ============================================================================================== the tasks
def _tokenizer_and_model_config(task, config, settings, head, texts):
    """The run's SentencePiece tokenizer (trained on ``texts`` the first time; a fine-tuning run has its
    checkpoint's) and the EncoderConfig: the tokenizer's pieces plus [MASK], the head this task trains."""
    config["model"] = {k: v for k, v in config.get("model", {}).items() if k != "head"}  # the head is the task's
    section = model_settings(config, EncoderConfig, ("vocab_size",), settings)
    task.tok_dir = task.run_dir / "tokenizer"
    task.tokenizer = prepare_lm_tokenizer(config, "\n".join(texts), task.tok_dir, default_kind="sentencepiece")
    config["model"]["head"] = head
    return EncoderConfig(vocab_size=task.tokenizer.vocab_size + 1, head=head, **section)


class _EncoderTask:
    """What both encoder tasks share: batches over a TextDataset, the saved data position, the tokenizer files."""

    batches: BatchIterator
    tok_dir: Path
    tokenizer: Tokenizer

    @property
    def epoch(self):
        return self.batches.epoch

    def loss(self, model, batch, label_smoothing=0.0, teacher=None, distill=(0.5, 1.0)):
        return token_loss(self, model, batch, label_smoothing, teacher, distill)

    def data_state(self):
        return self.batches.state_dict()

    def load_data_state(self, state):
        self.batches.load_state_dict(state)

    def extra_files(self):
        return tokenizer_files(self.tok_dir)


class ClassifyTask(_EncoderTask):
    metric, metric_mode = "valid_accuracy", "max"

    def __init__(self, config: dict, run_dir: str | os.PathLike, settings: dict, build_model: bool = True):
        self.config, self.run_dir, self.settings = config, Path(run_dir), settings
        self.data_cfg = data = classify_data_settings(config.get("data", {}))
        files = classify_files(data)
        self.data_files = file_identity(files.values())
        train, valid = load_labelled(data, "train"), load_labelled(data, "valid")
        self.model_config = _tokenizer_and_model_config(self, config, settings, "classify", train.texts)
        if self.model_config.num_labels != len(data["labels"]):
            raise ConfigError(
                f"model.num_labels={self.model_config.num_labels} but data.labels has {len(data['labels'])} labels"
            )
        self.train_set = self.encode(train)
        self.valid_set = self.encode(valid)
        self.batches = BatchIterator(
            self.train_set,  # type: ignore[arg-type]
            max_tokens=int(settings["max_tokens"]),
            seed=int(settings["seed"]),
        )
        self.model = TextEncoder(self.model_config) if build_model else None
        counts = np.bincount(train.labels, minlength=len(data["labels"]))
        log.info(
            f"{len(train.texts)} training texts ({', '.join(f'{n} {c}' for n, c in zip(data['labels'], counts))}), "
            f"{len(valid.texts)} validation texts; vocabulary {self.model_config.vocab_size} (with [MASK])"
        )

    def encode(self, texts: LabelledTexts) -> TextDataset:
        return encode_labelled(self.tokenizer, texts, self.model_config)

    def next_batch(self):
        return next(self.batches)

    @staticmethod
    def batch_tokens(batch):
        return len(batch.indices)  # the loss is normalised per text

    @staticmethod
    def logits_and_targets(model, batch):
        """(logits (B, K), labels (B,), ignore_index)."""
        return model(batch.ids), batch.labels, -100

    def validate(self, model, settings):
        scores = evaluate_classifier(model, self.valid_set, int(settings["max_tokens"]))
        return {
            "valid_loss": scores["loss"],
            "valid_accuracy": scores["accuracy"],
            "valid_macro_f1": scores["macro_f1"],
        }

    def generators(self):
        return {}


@dataclass
class MaskedBatch:
    ids: np.ndarray  # (B, L) the inputs, with [MASK] / random / kept pieces at the chosen positions
    positions: np.ndarray  # (N,) flat indices into B*L of the chosen positions
    targets: np.ndarray  # (N,) their original pieces


def mlm_data_settings(section: dict) -> dict:
    check_keys("data", section, MLM_DATA_DEFAULTS)
    data = check_numbers("data", {**MLM_DATA_DEFAULTS, **section})
    sources = data["sources"]
    if not isinstance(sources, list) or any(s not in MLM_SOURCES for s in sources):
        raise ConfigError(f"[data] sources must be a list of {', '.join(map(repr, MLM_SOURCES))}, got {sources!r}")
    if not sources and not data["text_path"]:
        raise ConfigError("[data] masked-LM pre-training needs texts: data.sources or data.text_path")
    return data


def mlm_texts(data: dict) -> tuple[list[str], list[Path]]:
    """The unlabelled training texts (one a line, blank lines and WikiText's ``= Heading =`` lines left out) and the
    files they came from."""
    texts: list[str] = []
    files: list[Path] = []
    data_dir = data["data_dir"] or None
    if "wikitext2" in data["sources"]:
        path = cached_file("wikitext2/wiki.train.tokens.gz", data_dir=data_dir)
        files.append(path)
        for line in read_lines(path):
            line = (line or "").strip()
            if line and not (line.startswith("=") and line.endswith("=")):
                texts.append(line)
    if "sst2" in data["sources"]:  # the training sentences without their labels (never the dev set)
        path = cached_file(SST2_FILES["train"], data_dir=data_dir)
        files.append(path)
        texts += read_labelled_tsv(path, ["0", "1"]).texts
    for corpus in ("dailydialog", "samsum"):
        if corpus in data["sources"]:
            lines, path = training_utterances(corpus, data_dir=data_dir)
            files.append(path)
            texts += lines
    if data["text_path"]:
        path = Path(data["text_path"])
        files.append(path)
        texts += [line.strip() for line in read_lines(path) if line and line.strip()]
    if not texts:
        raise DataValidationError(f"no text to pre-train on in {', '.join(map(str, files))}")
    return texts, files


def chunk_pieces(encoded: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Each text's pieces as consecutive chunks of at most ``size`` (a long WikiText paragraph is several
    training texts; nothing is dropped)."""
    return [list(ids[i : i + size]) for ids in encoded for i in range(0, len(ids), size) if ids]


class MLMTask(_EncoderTask):
    metric, metric_mode = "valid_loss", "min"

    def __init__(self, config: dict, run_dir: str | os.PathLike, settings: dict, build_model: bool = True):
        self.config, self.run_dir, self.settings = config, Path(run_dir), settings
        self.data_cfg = data = mlm_data_settings(config.get("data", {}))
        texts, files = mlm_texts(data)
        self.data_files = file_identity(files)
        self.model_config = cfg = _tokenizer_and_model_config(self, config, settings, "mlm", texts)
        pieces = chunk_pieces(self.tokenizer.encode(texts), cfg.max_len - 1)  # a long text: several chunks
        order = np.random.default_rng(int(data["split_seed"])).permutation(len(pieces))
        held = min(int(data["valid_texts"]), len(pieces) - 1)
        if held < 1:
            raise DataValidationError("masked-LM pre-training needs at least two texts (training and validation)")
        self.valid_set = TextDataset([[cfg.cls_id] + pieces[i] for i in order[:held]], pad_id=cfg.pad_id)
        self.train_set = TextDataset([[cfg.cls_id] + pieces[i] for i in np.sort(order[held:])], pad_id=cfg.pad_id)
        self.batches = BatchIterator(
            self.train_set,  # type: ignore[arg-type]
            max_tokens=int(settings["max_tokens"]),
            seed=int(settings["seed"]),
        )
        self.rng = np.random.default_rng([int(settings["seed"]), 3])  # the masks (saved for exact resume)
        self.model = TextEncoder(cfg) if build_model else None
        log.info(
            f"{len(texts)} texts -> {len(self.train_set)} training pieces of at most {cfg.max_len} positions "
            f"({int(self.train_set.src_lengths.sum()):,} sub-words), {len(self.valid_set)} held out; "
            f"vocabulary {cfg.vocab_size} (with [MASK])"
        )

    def mask(self, batch: TextBatch, rng: np.random.Generator) -> MaskedBatch:
        cfg = self.model_config
        inputs, positions, targets = mask_tokens(
            batch.ids,
            batch.ids != cfg.pad_id,
            rng,
            mask_id=cfg.mask_id,
            vocab_low=4,  # the pieces after pad/unk/bos/eos
            vocab_high=cfg.vocab_size - 1,
            prob=float(self.data_cfg["mask_prob"]),
        )
        return MaskedBatch(inputs, positions, targets)

    def next_batch(self):
        return self.mask(next(self.batches), self.rng)

    @staticmethod
    def batch_tokens(batch):
        return len(batch.positions)  # the loss is normalised per predicted piece

    @staticmethod
    def logits_and_targets(model, batch):
        """(logits (N, V) at the chosen positions, their original pieces (N,), ignore_index): no other position
        carries loss."""
        return model.mlm_logits(batch.ids, batch.positions), batch.targets, -100

    def validate(self, model, settings):
        """Masked-LM loss and accuracy on the held-out texts, masked the same way at every validation (a generator
        seeded afresh), so the curve compares like with like."""
        rng = np.random.default_rng([int(settings["seed"]), 4])
        total, correct, count = 0.0, 0, 0
        for batch in text_batches(self.valid_set, int(settings["max_tokens"])):
            masked = self.mask(batch, rng)
            logits = model.mlm_logits(masked.ids, masked.positions)
            total += float(F.cross_entropy(logits, masked.targets, reduction="sum").data)
            correct += int((logits.data.argmax(axis=1) == masked.targets).sum())
            count += len(masked.targets)
        return {"valid_loss": total / count, "valid_accuracy": correct / count}

    def generators(self):
        return {"masking": self.rng}


# ============================================================================================== commands' helpers
def run_labels(run_config: dict) -> tuple[dict, list[str]]:
    """(data settings, label names) of a classification run's saved config."""
    data = classify_data_settings(run_config.get("data", {}))
    return data, [str(name) for name in data["label_names"]]


def predict_texts(model: TextEncoder, tokenizer: Tokenizer, texts: Sequence[str], origin: str) -> np.ndarray:
    """Class probabilities (N, K) of raw texts (one a line of ``origin``): an empty line is refused with its line
    number; an over-long one is cut (and said)."""
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise DataValidationError(f"{origin}: line {number} is empty; give one text a line")
    cfg = model.config
    ids = encode_texts(tokenizer, [t.strip() for t in texts], cfg.max_len, cfg.cls_id, lambda i: f"line {i + 1}")
    return predict_probabilities(model, TextDataset(ids, pad_id=cfg.pad_id))


def format_confusion(confusion: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    """The confusion matrix as a small table: rows the gold labels, columns the predicted ones."""
    width = max(max(len(n) for n in names), max(len(str(v)) for row in confusion for v in row), 9)
    lines = [" " * width + " | " + " ".join(f"{n:>{width}}" for n in names) + "   (columns: predicted)"]
    for name, row in zip(names, confusion):
        lines.append(f"{name:>{width}} | " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
