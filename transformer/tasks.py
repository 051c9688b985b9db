"""The two tasks the training loop runs: translation and language modelling.

A task turns a run config into data, tokenizers and a model, and gives the loop what it needs:
``next_batch()``, ``batch_tokens(batch)``, ``loss(model, batch)`` (a summed loss: the loop
normalises), ``validate(model, settings)`` (a dict holding ``self.metric``), the data position and
generators for exact resume, and the files a checkpoint must carry (the tokenizer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import npgrad as ng
from npgrad import functional as F

from . import search
from .console import log, track
from .config import ConfigError, check_choices, check_keys, check_numbers, check_split_size
from .data import (
    ON_BAD_CHOICES,
    Batch,
    BatchIterator,
    DataValidationError,
    LMBatcher,
    LMStreamBatcher,
    StreamSegment,
    TranslationDataset,
    evaluation_batches,
    limit_subword_length,
    split_stream,
)
from .datasets import Corpus, ParallelText, ValidationOptions, file_identity, load_text, load_translation_corpus
from .files import write_atomic
from .evaluate import lm_scores, perplexity, translation_scores
from .mixing import (
    MixBatchIterator,
    TrainingMix,
    TrainingPart,
    corpus_files,
    load_training_corpora,
    sampling_settings,
)
from .model import LanguageModel, Transformer
from .rnn import RECURRENT_KINDS, model_classes
from .tokenizer import CharTokenizer, Tokenizer, TokenizerError, load_tokenizers, train_sentencepiece

DATA_DEFAULTS = dict(
    corpus="multi30k",
    src="de",
    tgt="en",
    data_dir="",
    src_path="",
    tgt_path="",
    tsv_path="",
    src_column=0,
    tgt_column=1,
    valid_size=0.05,
    test_size=0.05,
    split_seed=0,
    max_tokens=250,
    max_chars=0,
    max_ratio=9.0,
    on_bad="filter",
    text_path="",
    train_fraction=0.9,
    # Another training split for the same corpus (its valid/test kept): e.g. the teacher's translations of the
    # training sources written by `distill` (sequence-level distillation), two aligned files.
    train_src_path="",
    train_tgt_path="",
    # The low-resource recipe (transformer/mixing.py): only the pairs of the first N lines of the training split's
    # files (0: all); its weight in the mix; more training corpora ({tsv_path | src_path, tgt_path; weight; tag});
    # the piece that starts a tagged corpus's sources (a tokenizer.user_defined_symbols entry).
    train_lines=0,
    train_weight=1.0,
    train_corpora=[],
    tag="",
)
TOKENIZER_DEFAULTS = dict(
    kind="sentencepiece",
    vocab_size=8000,
    model_type="unigram",
    joint=True,
    normalization_rule="nmt_nfkc",
    character_coverage=1.0,
    input_sentence_size=1_000_000,
    seed=0,
    user_defined_symbols=[],
    # Subword regularisation (transformer/mixing.py): the training split re-segmented every epoch; 0 = off.
    sample_alpha=0.0,
    nbest=-1,
)
# Settings of how the training split is segmented, not of the tokenizer itself: a run may change them while
# keeping (or sharing) a tokenizer.
SAMPLING_KEYS = ("sample_alpha", "nbest")


def model_settings(config: dict, config_class, from_tokenizer: tuple[str, ...], settings: dict) -> dict:
    """The [model] section checked (known keys, numbers in range) before any corpus is read or tokenizer trained;
    the vocabulary sizes come from the tokenizer, never from the config; the seed defaults to train.seed."""
    import dataclasses

    section = check_numbers("model", config.get("model", {}))
    fields = {f.name for f in dataclasses.fields(config_class)}
    if "kind" not in fields:  # the Transformer's configs predate model.kind (transformer/rnn.py): not stored
        section.pop("kind", None)
    check_keys("model", section, fields - set(from_tokenizer))
    section.setdefault("seed", int(settings["seed"]))
    config_class(**dict.fromkeys(from_tokenizer, 1 << 16), **section)  # the config's own checks, now (no weights)
    return section


def tokenizer_files(directory: Path) -> dict:
    return {p.name: p for p in sorted(Path(directory).iterdir()) if p.is_file() and not p.name.startswith(".")}


# ============================================================================================ translation
class TranslationTask:
    metric, metric_mode = "valid_bleu", "max"
    # What a sequence-to-sequence task built on this one changes (summarise.py, dialogue.py): its own [data] keys and
    # defaults over DATA_DEFAULTS (e.g. no length-ratio filter for long sources and short targets), the symbols its
    # tokenizer keeps whole (a turn separator), and how its corpus is read and its sources cut (cut_sources).
    data_defaults: dict = {}
    user_symbols: tuple[str, ...] = ()

    def __init__(self, config: dict, run_dir: str | os.PathLike, settings: dict, build_model: bool = True):
        self.config, self.run_dir, self.settings = config, Path(run_dir), settings
        self.data_cfg = data = data_settings(config.get("data", {}), self.data_defaults)
        # The vocabulary sizes come from the tokenizer, never from the config; the rest is checked before any work.
        config_class, model_class = model_classes("translation", config.get("model", {}))
        model_section = model_settings(config, config_class, ("src_vocab_size", "tgt_vocab_size"), settings)
        self.corpus = self.load_corpus(data)
        self.data_files = file_identity(self.corpus.files)  # (validation logged a report of each split)
        if len(self.corpus["valid"]) == 0:
            raise ConfigError(
                f"{self.corpus.name}: the validation split is empty (data.valid_size="
                f"{data['valid_size']}); validation (BLEU, the best checkpoint, early stopping) needs "
                "at least one pair: set data.valid_size to a count >= 1 or a fraction > 0"
            )
        self.tok_dir = self.run_dir / "tokenizer"
        self.src_tok, self.tgt_tok = prepare_tokenizers(config, self.corpus["train"], self.tok_dir, self.user_symbols)
        self.model_config = config_class(
            src_vocab_size=self.src_tok.vocab_size, tgt_vocab_size=self.tgt_tok.vocab_size, **model_section
        )
        self.valid_set = self.encode(self.corpus["valid"])
        sampling = sampling_settings(tokenizer_settings(config))
        if sampling or data["train_corpora"] or data["train_weight"] != 1:
            self.batches = self.training_mix(sampling)
            self.train_set = self.batches.dataset
        else:
            self.train_set = self.encode_training(self.corpus["train"], data["on_bad"])
            self.batches = BatchIterator(
                self.train_set, max_tokens=int(settings["max_tokens"]), seed=int(settings["seed"])
            )
        self.model = model_class(self.model_config) if build_model else None

    def length_limit(self) -> tuple[int, str]:
        """The longest padded training sequence (what a batch or the position table holds), and why."""
        limit, why = int(self.settings["max_tokens"]), f"train.max_tokens={int(self.settings['max_tokens'])}"
        if self.model_config.positional == "learned" and self.model_config.max_len < limit:
            limit, why = self.model_config.max_len, f"model.max_len={self.model_config.max_len} learned positions"
        return limit, why

    def training_mix(self, sampling):
        """The batches of a training split mixed from several corpora and/or re-segmented every epoch."""
        data = self.data_cfg
        if type(self).cut_sources is not TranslationTask.cut_sources:
            # The mix encodes its corpora itself and would neither cut the long sources nor keep a dialogue's turns
            # (which share one file line) apart: refused rather than trained on silently different data.
            raise ConfigError(
                f"{self.corpus.name}: subword sampling (tokenizer.sample_alpha), data.train_corpora and "
                "data.train_weight are built for translation corpora; a task whose sources are cut "
                "(summarisation, dialogue) does not take them"
            )
        tag_id = None
        if data["tag"]:
            tag_id = self.src_tok.piece_id(data["tag"]) if hasattr(self.src_tok, "piece_id") else None
            if tag_id is None:
                raise ConfigError(
                    f"[data] tag {data['tag']!r} is not a piece of the tokenizer in {self.tok_dir}: train the "
                    f"tokenizer with tokenizer.user_defined_symbols=[{data['tag']!r}] (a new --run-dir)"
                )
        parts = [TrainingPart(f"{self.corpus.name} train", self.corpus["train"], float(data["train_weight"]))]
        parts += load_training_corpora(
            data["train_corpora"], src_lang=data["src"], tgt_lang=data["tgt"], validation=validation_options(data)
        )
        limit, why = self.length_limit()
        mix = TrainingMix(
            parts,
            self.src_tok,
            self.tgt_tok,
            seed=int(self.settings["seed"]),
            max_len=limit,
            why=why,
            on_bad=data["on_bad"],
            sampling=sampling,
            tag_id=tag_id,
        )
        log.info(
            f"training mix of {len(mix)} examples an epoch: {mix.describe()}"
            + (f"; subword sampling alpha={sampling[0]}, nbest={sampling[1]}" if sampling else "")
        )
        return MixBatchIterator(mix, max_tokens=int(self.settings["max_tokens"]), seed=int(self.settings["seed"]))

    def encode_training(self, pairs, on_bad):
        """The training pairs as sub-words, without those no batch or position table can hold: longer than
        ``train.max_tokens`` (a batch's padded size) or, with learned positions, than ``model.max_len``; they are
        dropped and reported with their file lines (``data.on_bad = "error"`` refuses them instead)."""
        src_ids, tgt_ids = self.cut_sources(self.src_tok.encode(pairs.src), pairs), self.tgt_tok.encode(pairs.tgt)
        limit, why = self.length_limit()
        lines = [pairs.line_of(i) for i in range(len(pairs))]
        src_ids, tgt_ids, report = limit_subword_length(
            src_ids,
            tgt_ids,
            max_len=limit,
            on_bad=on_bad,
            name="train",
            line_numbers=lines,
            origin=pairs.origin,
            why=why,
        )
        if not src_ids:
            raise DataValidationError(f"no training pair is left: {report.message}; raise the limit ({why})")
        return TranslationDataset(src_ids, tgt_ids)

    def encode(self, pairs):
        """Evaluation pairs as sub-words, each side cut to what the model's positions hold (evaluation sets are
        never filtered: every reference counts; the cut is said)."""
        src_ids, tgt_ids = self.cut_sources(self.src_tok.encode(pairs.src), pairs), self.tgt_tok.encode(pairs.tgt)
        return TranslationDataset(*truncate_for_model(src_ids, tgt_ids, self.model_config, pairs))

    def load_corpus(self, data: dict) -> Corpus:
        return load_corpus(data)

    def cut_sources(self, src_ids: list, pairs: ParallelText) -> list:
        """Source sub-words as the model reads them (translation: unchanged; a long-source task cuts them)."""
        return src_ids

    @property
    def epoch(self):
        return self.batches.epoch

    def next_batch(self):
        return next(self.batches)

    @staticmethod
    def batch_tokens(batch):
        return batch.num_tgt_tokens

    def loss(self, model, batch, label_smoothing=0.0, teacher=None, distill=(0.5, 1.0)):
        return token_loss(self, model, batch, label_smoothing, teacher, distill)

    @staticmethod
    def logits_and_targets(model, batch):
        """(logits (B*T, V), targets (B*T,), ignore_index): what the loss compares."""
        logits = model(batch.src, batch.tgt_in)  # (B, T, V)
        return logits.reshape(-1, logits.shape[-1]), batch.tgt_out.reshape(-1), model.config.pad_id

    def validate(self, model, settings):
        total, tokens = corpus_loss(model, self.valid_set, int(settings["decode_max_tokens"]))
        metrics = {"valid_loss": total / tokens, "valid_ppl": perplexity(total, tokens)}
        limit = int(settings["bleu_max_sentences"]) or len(self.valid_set)
        subset = self.corpus["valid"]
        sources, references = subset.src[:limit], subset.tgt[:limit]
        hyps = translate_sentences(
            model,
            self.src_tok,
            self.tgt_tok,
            sources,
            beam=int(settings["bleu_beam"]),
            max_tokens=int(settings["decode_max_tokens"]),
        )
        scores = translation_scores(hyps, [references])
        metrics["valid_bleu"], metrics["valid_chrf"] = scores["bleu"], scores["chrf"]
        return metrics

    def data_state(self):
        return self.batches.state_dict()

    def load_data_state(self, state):
        self.batches.load_state_dict(state)

    def generators(self):
        return {}

    def extra_files(self):
        return tokenizer_files(self.tok_dir)


def token_loss(task, model, batch, label_smoothing=0.0, teacher=None, distill=(0.5, 1.0)) -> ng.Tensor:
    """The summed training loss of a batch: label-smoothed cross-entropy of the targets, and with a ``teacher``
    (word-level knowledge distillation, Hinton et al. 2015; Kim and Rush 2016) mixed with T^2 KL(teacher || student)
    on the temperature-softened distributions: (1 - w) * CE + w * KD for ``distill`` = (w, T); padding ignored."""
    logits, targets, ignore_index = task.logits_and_targets(model, batch)  # (N, V), (N,)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction="sum")
    if teacher is None:
        return loss
    weight, temperature = distill
    with ng.no_grad():
        teacher_logits, _, _ = task.logits_and_targets(teacher, batch)  # (N, V), a constant
    kd = F.kl_div(logits, teacher_logits, temperature, target=targets, ignore_index=ignore_index, reduction="sum")
    return loss * (1.0 - weight) + kd * weight


def translation_loss(model: Transformer, batch: Batch, label_smoothing: float = 0.0) -> ng.Tensor:
    """The summed target cross-entropy of a batch (padding ignored): a scalar Tensor."""
    logits = model(batch.src, batch.tgt_in)  # (B, T, V)
    V = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, V),
        batch.tgt_out.reshape(-1),
        ignore_index=model.config.pad_id,
        label_smoothing=label_smoothing,
        reduction="sum",
    )


def corpus_loss(
    model: Transformer, dataset: TranslationDataset, max_tokens: int, progress: bool = False
) -> tuple[float, int]:
    """(summed cross-entropy, target tokens) of a whole ``TranslationDataset``, without smoothing or gradients."""
    total, tokens = 0.0, 0
    model.eval()
    batches = evaluation_batches(dataset, max_tokens)
    with ng.no_grad():
        for batch in track(batches, "scoring the references") if progress else batches:
            total += float(translation_loss(model, batch).data)
            tokens += batch.num_tgt_tokens
    return total, tokens


def evaluate_translation(
    model: Transformer,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    pairs: ParallelText,
    *,
    beam: int = 5,
    alpha: float = 0.6,
    max_tokens: int = 8000,
    progress: bool = False,
    no_repeat_ngram_size: int = 0,
) -> tuple[dict, list[str]]:
    """What ``evaluate`` reports for some pairs (a ``ParallelText``): loss and perplexity of the references, and
    sacreBLEU/chrF (with signatures) of the decoded hypotheses. Returns (scores, hypotheses)."""
    if len(pairs) == 0:
        raise ValueError("there are no sentence pairs to evaluate")
    dataset = TranslationDataset(
        *truncate_for_model(src_tok.encode(pairs.src), tgt_tok.encode(pairs.tgt), model.config, pairs)
    )
    total, tokens = corpus_loss(model, dataset, max_tokens, progress)
    hyps = translate_sentences(
        model,
        src_tok,
        tgt_tok,
        pairs.src,
        beam=beam,
        max_tokens=max_tokens,
        alpha=alpha,
        progress=progress,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    scores = {
        "loss": total / tokens,
        "perplexity": perplexity(total, tokens),
        **translation_scores(hyps, [pairs.tgt]),
        "beam": beam,
    }
    return scores, hyps


def data_settings(section: dict, task_defaults: dict | None = None) -> dict:
    """The [data] section over the defaults (a task's own over DATA_DEFAULTS), its keys and numbers checked."""
    defaults = {**DATA_DEFAULTS, **(task_defaults or {})}
    check_keys("data", section, defaults)
    data = check_numbers("data", {**defaults, **section})
    for key in ("valid_size", "test_size"):
        data[key] = check_split_size(f"[data] {key}", data[key])
    if data["corpus"] == "tsv" and data["src_column"] == data["tgt_column"]:
        raise ConfigError(
            f"[data] src_column and tgt_column are both {data['src_column']}: a sentence would be its own translation"
        )
    if data["on_bad"] not in ON_BAD_CHOICES:
        raise ConfigError(f"[data] on_bad must be one of {', '.join(ON_BAD_CHOICES)}, got {data['on_bad']!r}")
    return data


def truncate_for_model(src_ids, tgt_ids, model_config, pairs=None):
    """Cut each side to ``max_len - 1`` sub-words (+ EOS / BOS fills the table) when the model has learned
    positions; says how many pairs were cut. Returns the (src_ids, tgt_ids) lists."""
    if model_config.positional != "learned":
        return src_ids, tgt_ids
    keep = model_config.max_len - 1
    cut = [i for i, (x, y) in enumerate(zip(src_ids, tgt_ids)) if len(x) > keep or len(y) > keep]
    if cut:
        where = (
            f"line {pairs.line_of(cut[0])} of {pairs.origin}"
            if pairs is not None and pairs.origin
            else f"pair {cut[0] + 1}"
        )
        log.info(
            f"note: {len(cut)} evaluation pair(s) longer than model.max_len={model_config.max_len} sub-words were "
            f"cut to fit the positions (first: {where})"
        )
    return [x[:keep] for x in src_ids], [y[:keep] for y in tgt_ids]


def validation_options(data: dict) -> ValidationOptions:
    return ValidationOptions(
        max_tokens=data["max_tokens"] or None,
        max_chars=data["max_chars"] or None,
        max_ratio=data["max_ratio"] or None,
        on_bad=data["on_bad"],
    )


def load_corpus(data: dict) -> Corpus:
    validation = validation_options(data)
    paths = {}
    if data["corpus"] in ("files", "tsv"):
        for key in ("src_path", "tgt_path", "tsv_path"):
            if data[key]:
                paths[key] = data[key]
        if data["corpus"] == "tsv":
            paths.update(src_column=data["src_column"], tgt_column=data["tgt_column"])
        paths.update(valid_size=data["valid_size"], test_size=data["test_size"])
    corpus = load_translation_corpus(
        data["corpus"],
        data["src"],
        data["tgt"],
        data_dir=data["data_dir"] or None,
        validation=validation,
        seed=int(data["split_seed"]),
        **paths,
    )
    if data["train_src_path"] or data["train_tgt_path"]:
        if not (data["train_src_path"] and data["train_tgt_path"]):
            raise ConfigError("[data] train_src_path and train_tgt_path go together (two aligned files)")
        from .datasets import load_parallel_files

        pairs, report = load_parallel_files(
            data["train_src_path"],
            data["train_tgt_path"],
            src_lang=data["src"],
            tgt_lang=data["tgt"],
            name="train (replaced)",
            validation=validation,
            split="train",
        )
        corpus.splits["train"], corpus.reports["train"] = pairs, report
        corpus.files += [Path(data["train_src_path"]), Path(data["train_tgt_path"])]
    if data["train_lines"]:
        train = corpus["train"]
        corpus.splits["train"] = train.subset([i for i in range(len(train)) if train.line_of(i) <= data["train_lines"]])
        if len(corpus["train"]) == 0:
            raise ConfigError(f"[data] train_lines={data['train_lines']} leaves no training pair")
        log.info(f"data.train_lines={data['train_lines']}: {len(corpus['train'])} training pairs (of {len(train)})")
    corpus.files += corpus_files(data["train_corpora"])  # read by training only (training_mix), recorded by all
    return corpus


def tokenizer_settings(config: dict, **defaults) -> dict:
    """The [tokenizer] section over the defaults, its keys and numbers checked."""
    section = config.get("tokenizer", {})
    check_keys("tokenizer", section, TOKENIZER_DEFAULTS)
    return check_numbers("tokenizer", {**TOKENIZER_DEFAULTS, **defaults, **section})


# The [tokenizer] settings a run's tokenizer was trained with, beside it: the tokenizer directory is the one source
# of truth, and a later command whose settings differ (a prepare override not repeated, an override on --resume) is
# refused instead of training with one tokenizer while config.json records another.
TOKENIZER_SETTINGS_FILE = "settings.json"


def check_tokenizer_settings(tok_dir: Path, tok: dict) -> None:
    path = tok_dir / TOKENIZER_SETTINGS_FILE
    if not path.is_file():
        return  # a tokenizer saved before settings were recorded
    saved = json.loads(path.read_text(encoding="utf-8"))
    # A key saved before it existed had its default then; sampling settings are the run's, not the tokenizer's.
    keys = sorted((set(saved) | set(tok)) - set(SAMPLING_KEYS))
    saved = {key: saved.get(key, TOKENIZER_DEFAULTS.get(key)) for key in keys}
    changed = [
        f"{key}={saved.get(key)!r} (this command: {tok.get(key)!r})" for key in keys if saved.get(key) != tok.get(key)
    ]
    if changed:
        raise ConfigError(
            f"{tok_dir} holds the run's tokenizer, trained with tokenizer."
            + ", tokenizer.".join(changed)
            + "; a run keeps the tokenizer it was prepared with: repeat those settings, or use another "
            "--run-dir for a new tokenizer"
        )


def record_tokenizer_settings(tok_dir: Path, tok: dict) -> None:
    tok = {key: value for key, value in tok.items() if key not in SAMPLING_KEYS}
    write_atomic(tok_dir / TOKENIZER_SETTINGS_FILE, json.dumps(tok, indent=2, sort_keys=True) + "\n")


def check_symbols(symbols) -> list[str]:
    if not isinstance(symbols, list) or not all(isinstance(s, str) and s.strip() == s and s for s in symbols):
        raise ConfigError(f"[tokenizer] user_defined_symbols must be a list of non-empty pieces, got {symbols!r}")
    return symbols


def _say_if_capped(tokenizer, tok: dict) -> None:
    if tokenizer.vocab_size < int(tok["vocab_size"]):
        log.warning(
            f"tokenizer.vocab_size={tok['vocab_size']} asked for more pieces than the training text has: "
            f"SentencePiece made {tokenizer.vocab_size}"
        )


def prepare_tokenizers(
    config: dict, train_pairs: ParallelText, tok_dir: Path, user_symbols: Sequence[str] = ()
) -> tuple[Tokenizer, Tokenizer]:
    """Load the run's tokenizers (refusing settings other than theirs), training them from the training split the
    first time."""
    tok = tokenizer_settings(config)
    if (tok_dir / "tokenizer.json").is_file():
        check_tokenizer_settings(tok_dir, tok)
        return load_tokenizers(tok_dir)
    log.info(f"training SentencePiece ({tok['model_type']}, {tok['vocab_size']}, joint={tok['joint']}) into {tok_dir}")
    tokenizers = train_sentencepiece(
        train_pairs.src,
        train_pairs.tgt,
        tok_dir,
        joint=bool(tok["joint"]),
        vocab_size=int(tok["vocab_size"]),
        model_type=tok["model_type"],
        normalization_rule=tok["normalization_rule"],
        character_coverage=float(tok["character_coverage"]),
        input_sentence_size=int(tok["input_sentence_size"]),
        seed=int(tok["seed"]),
        user_defined_symbols=check_symbols(tok["user_defined_symbols"])
        + [s for s in user_symbols if s not in tok["user_defined_symbols"]],
    )
    record_tokenizer_settings(tok_dir, tok)
    _say_if_capped(tokenizers[0], tok)
    return tokenizers


def translate_sentences(
    model: Transformer,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    sentences: Sequence[str],
    beam: int = 1,
    max_tokens: int = 8000,
    alpha: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    progress: bool = False,
    tokens: list | None = None,
    rng: np.random.Generator | None = None,
    top_k: int | None = None,
    **options,
) -> list[str]:
    """Detokenised translations of raw source sentences, in the input order (empty input -> empty output);
    ``progress`` shows a progress bar (plain lines when standard error is not a terminal). A ``tokens`` list receives,
    per input line, (source ids as fed, truncated, before the batch's EOS; generated ids without BOS/EOS; whether it
    ended with EOS), or None for an empty line. With ``rng`` (and ``beam=1``) each translation is sampled (from the
    ``top_k`` most probable tokens if given) instead of searched. ``options`` go to ``decode_sources`` (n-gram
    blocking, sampling settings)."""
    if rng is not None and beam > 1:
        raise ValueError(f"sampled translations take no beam (beam={beam}): sampling draws one token at a time")
    if rng is not None:
        options["sampling"] = {"top_k": top_k, **options.get("sampling", {})}
        options["rng"] = rng
    encoded = src_tok.encode([s.strip() for s in sentences])
    return decode_sources(
        model,
        tgt_tok,
        encoded,
        beam,
        max_tokens,
        alpha,
        max_len_a,
        max_len_b,
        progress=progress,
        tokens=tokens,
        **options,
    )


def decode_sources(
    model: Transformer,
    tgt_tok: Tokenizer,
    encoded: list[list[int]],
    beam: int = 1,
    max_tokens: int = 8000,
    alpha: float = 0.6,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    *,
    no_repeat_ngram_size: int = 0,
    sampling: dict | None = None,
    rng: np.random.Generator | None = None,
    progress: bool = False,
    tokens: list | None = None,
) -> list[str]:
    """Detokenised outputs for sources already as sub-word ids (an empty source gives an empty output): greedy
    (``beam`` 1), beam search, or with ``sampling`` (``temperature``, ``top_k``, ``top_p``, and ``seed`` unless an
    ``rng`` draws) sampling;
    ``no_repeat_ngram_size`` n > 0 never lets an output repeat an n-gram of its own (search.py); ``tokens`` as in
    ``translate_sentences``."""
    outputs = [""] * len(encoded)
    if tokens is not None:
        tokens[:] = [None] * len(encoded)
    limit = model.config.max_len - 1
    keep = [i for i, ids in enumerate(encoded) if ids]
    if not keep:
        return outputs
    # Over-long inputs are cut to what the positional table holds (said on stderr, never dropped).
    kept = limit - 1
    long_inputs = [i for i in keep if len(encoded[i]) > kept]
    if long_inputs:
        log.warning(
            f"{len(long_inputs)} input line(s) longer than {kept} sub-word tokens were truncated to {kept} "
            f"(first: line {long_inputs[0] + 1})"
        )
    dataset = TranslationDataset([encoded[i][:kept] for i in keep], [[] for _ in keep])
    model.eval()
    # A beam multiplies a batch's rows by its size: a batch holds at most max_tokens // beam sentences, so a large
    # beam decodes in smaller batches instead of running out of memory (beam 5 with 8000 tokens: unchanged).
    max_sentences = max(1, max_tokens // beam) if beam > 1 else None
    batches = evaluation_batches(dataset, max_tokens, max_sentences)
    if sampling and rng is None:
        rng = np.random.default_rng(int(sampling.get("seed", 0)))
    with ng.no_grad():
        for batch in track(batches, "translating") if progress else batches:
            if beam <= 1 or sampling:
                picking = {k: v for k, v in (sampling or {}).items() if k != "seed"}
                result = search.greedy(
                    model,
                    batch.src,
                    max_len=limit,
                    max_len_a=max_len_a,
                    max_len_b=max_len_b,
                    no_repeat_ngram_size=no_repeat_ngram_size,
                    rng=rng,
                    **picking,
                )
                token_lists, ended = result.tokens, list(result.ended)
            else:
                hyps = search.beam_search(
                    model,
                    batch.src,
                    beam_size=beam,
                    max_len=limit,
                    alpha=alpha,
                    max_len_a=max_len_a,
                    max_len_b=max_len_b,
                    no_repeat_ngram_size=no_repeat_ngram_size,
                )
                token_lists, ended = [h[0].tokens for h in hyps], [h[0].ended for h in hyps]
            texts = tgt_tok.decode([list(t) for t in token_lists])
            for i, (row, text) in enumerate(zip(batch.indices, texts)):
                outputs[keep[int(row)]] = text
                if tokens is not None:
                    fed = dataset.src_ids[int(row)].tolist()
                    tokens[keep[int(row)]] = (fed, list(token_lists[i]), bool(ended[i]))
    return outputs


# ============================================================================================ language model
LM_DATA_DEFAULTS = dict(corpus="tinyshakespeare", data_dir="", text_path="", train_fraction=0.9, batching="windows")


class LMTask:
    metric, metric_mode = "val_loss", "min"

    def __init__(self, config: dict, run_dir: str | os.PathLike, settings: dict, build_model: bool = True):
        self.config, self.run_dir, self.settings = config, Path(run_dir), settings
        section = config.get("data", {})
        check_keys("data", section, LM_DATA_DEFAULTS)
        data = check_numbers("data", {**LM_DATA_DEFAULTS, **section})
        check_choices("data", data)
        config_class, model_class = model_classes("lm", config.get("model", {}))
        # Truncated BPTT (LMStreamBatcher): each segment starts from the state the previous one ended in.
        self.stream = data["batching"] == "stream"
        kind = config.get("model", {}).get("kind", "transformer")
        if self.stream and kind not in RECURRENT_KINDS:
            raise ConfigError(
                f'[data] batching = "stream" carries a recurrent state across segments: it needs model.kind = '
                f'{", ".join(RECURRENT_KINDS)}; the {kind} LM has no state (use batching = "windows")'
            )
        model_section = model_settings(config, config_class, ("vocab_size",), settings)
        path = lm_text_path(data)
        text = load_lm_text(data, path)
        self.data_files = file_identity([path])
        self.tok_dir = self.run_dir / "tokenizer"
        self.tokenizer = prepare_lm_tokenizer(config, text, self.tok_dir)
        try:
            ids = encode_lm_text(self.tokenizer, text)
        except TokenizerError as error:  # a fine-tuning text with characters the run's tokenizer never saw
            raise TokenizerError(f"{path}: {str(error).removeprefix('text 0: ')} ({self.tok_dir})") from None
        self.train_ids, self.val_ids = split_stream(ids, float(data["train_fraction"]))
        self.model_config = config_class(vocab_size=self.tokenizer.vocab_size, **model_section)
        block = self.model_config.block_size
        check_lm_block_size(self.train_ids, self.val_ids, block, float(data["train_fraction"]))
        self.batcher: LMBatcher | LMStreamBatcher
        if self.stream:
            self.batcher = LMStreamBatcher(
                self.train_ids, block_size=block, batch_size=int(settings["batch_size"]), name="train"
            )
        else:
            self.batcher = LMBatcher(
                self.train_ids,
                block_size=block,
                batch_size=int(settings["batch_size"]),
                seed=int(settings["seed"]),
                name="train",
            )
        self.carried = None  # stream batching: the final state of the last segment trained on (arrays), detached
        self.model = model_class(self.model_config) if build_model else None
        self.epoch = 0

    def next_batch(self):
        batch = self.batcher.sample()
        if self.stream:  # an epoch is a pass over the stream
            self.epoch = self.batcher.passes
        return batch

    @staticmethod
    def batch_tokens(batch):
        return int(batch[1].size)

    def loss(self, model, batch, label_smoothing=0.0, teacher=None, distill=(0.5, 1.0)):
        return token_loss(self, model, batch, label_smoothing, teacher, distill)

    def logits_and_targets(self, model, batch):
        """(logits (B*T, V), targets (B*T,), ignore_index): what the loss compares (no position is ignored). A
        stream segment run by the model in training starts from the state the previous segment left (zero when a
        pass begins) and leaves its own final state, detached: truncated BPTT. (A teacher reads it from zero.)"""
        x, y = batch[0], batch[1]
        if isinstance(batch, StreamSegment) and model is self.model:
            logits, self.carried = model.forward_state(x, None if batch.first else self.carried)
        else:
            logits = model(x)  # (B, T, V)
        return logits.reshape(-1, logits.shape[-1]), y.reshape(-1), -100

    def validate(self, model, settings):
        """nanoGPT's estimate: mean loss of ``eval_iters`` random batches of each split, from generators seeded
        afresh each time (so validation never touches the training stream). With stream batching, the loss of as
        many tokens at the start of each split, read as the model trains: ``batch_size`` sub-streams, the state
        carried along each (``lm_split_loss`` with ``streams``)."""
        metrics = {}
        if self.stream:
            batch, block = int(settings["batch_size"]), self.model_config.block_size
            for name, ids in (("train_loss", self.train_ids), ("val_loss", self.val_ids)):
                prefix = ids[: int(settings["eval_iters"]) * batch * block + 1]
                metrics[name] = lm_split_loss(model, prefix, block, streams=batch)[0]
            return metrics
        for name, ids, seed in (("train_loss", self.train_ids, 1), ("val_loss", self.val_ids, 2)):
            batcher = LMBatcher(
                ids,
                block_size=self.model_config.block_size,
                batch_size=int(settings["batch_size"]),
                seed=[int(settings["seed"]), seed],
            )
            losses = [
                float(self.loss(model, batcher.sample()).data) / (batcher.batch_size * batcher.block_size)
                for _ in range(int(settings["eval_iters"]))
            ]
            metrics[name] = float(np.mean(losses))
        return metrics

    def data_state(self):
        """Stream batching: the position in the stream and the carried state (arrays: optimizer.safetensors)."""
        return {"stream": self.batcher.state_dict(), "carried": self.carried} if self.stream else {}

    def load_data_state(self, state):
        if self.stream and state:
            self.batcher.load_state_dict(state["stream"])
            self.carried = state["carried"]
            self.epoch = self.batcher.passes

    def generators(self):
        return {} if isinstance(self.batcher, LMStreamBatcher) else {"train_windows": self.batcher.rng}

    def extra_files(self):
        return tokenizer_files(self.tok_dir)


def lm_text_path(data: dict) -> Path:
    """The file a language model's [data] section names (tiny Shakespeare: fetched into the cache if missing)."""
    if data["text_path"]:
        return Path(data["text_path"])
    if data["corpus"] == "tinyshakespeare":
        from .datasets import TINYSHAKESPEARE_URL, fetch

        return fetch("tinyshakespeare/input.txt", TINYSHAKESPEARE_URL + "input.txt", data_dir=data["data_dir"] or None)
    if data["corpus"] == "wikitext2":  # the tokenised release's training text (its own split by train_fraction)
        from .datasets import cached_file

        return cached_file("wikitext2/wiki.train.tokens.gz", data_dir=data["data_dir"] or None)
    raise ValueError(
        f"[data] corpus {data['corpus']!r}: a language model reads 'tinyshakespeare', 'wikitext2' or a text_path"
    )


def load_lm_text(data: dict, path: Path | None = None) -> str:
    path = path or lm_text_path(data)
    text = load_text(path)
    where = str(path)
    if not text:
        raise ValueError(f"{where}: the corpus is empty; a language model needs a text to learn from")
    if len(text) < 2:
        raise ValueError(
            f"{where}: the corpus is one character ({text!r}); a language model needs a text "
            "(at least block_size + 1 characters in each split)"
        )
    if len(set(text)) < 2:
        raise ValueError(
            f"{where}: the corpus is {len(text)} copies of one character ({text[0]!r}); there is nothing to predict"
        )
    return text


def check_lm_block_size(train_ids, val_ids, block_size, train_fraction):
    """Each split must hold one window of ``block_size`` inputs plus the target after it."""
    total = len(train_ids) + len(val_ids)
    for name, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) <= block_size:
            raise ValueError(
                f"model.block_size={block_size} is too large for the {name} split: it has {len(ids)} tokens "
                f"({total} in the corpus, train_fraction {train_fraction}) and a window needs block_size + 1 = "
                f"{block_size + 1}; use a smaller block_size or a longer text"
            )


def prepare_lm_tokenizer(config: dict, text: str, tok_dir: Path, default_kind: str = "char") -> Tokenizer:
    tok = tokenizer_settings(config, kind=default_kind)
    if (tok_dir / "tokenizer.json").is_file():
        check_tokenizer_settings(tok_dir, tok)
        return load_tokenizers(tok_dir)[0]
    tok_dir.mkdir(parents=True, exist_ok=True)
    tokenizer: Tokenizer
    if tok["kind"] == "char":
        tokenizer = CharTokenizer.from_text(text)
        tokenizer.save(tok_dir)
    elif tok["kind"] == "sentencepiece":
        lines = [line for line in text.splitlines() if line.strip()]
        tokenizer = train_sentencepiece(
            lines,
            None,
            tok_dir,
            vocab_size=int(tok["vocab_size"]),
            model_type=tok["model_type"],
            normalization_rule=tok["normalization_rule"],
            seed=int(tok["seed"]),
        )[0]
        _say_if_capped(tokenizer, tok)
    else:
        raise ConfigError(f"[tokenizer] kind must be char or sentencepiece, got {tok['kind']!r}")
    record_tokenizer_settings(tok_dir, tok)
    return tokenizer


def _newline_id(tokenizer):
    """SentencePiece's byte piece for "\n" (``byte_fallback`` models have one), or None."""
    processor = getattr(tokenizer, "processor", None)
    if processor is None:
        return None
    piece_id = processor.piece_to_id("<0x0A>")
    return None if piece_id == processor.unk_id() else piece_id


def encode_lm_text(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """A text as one int64 token stream. Characters map one to one; SentencePiece encodes line by line
    and joins the lines with its newline byte piece, because its normalisation turns a newline inside
    a text into a space and the line structure (verse, speakers) is part of what the model learns."""
    newline = _newline_id(tokenizer)
    if newline is None:
        return np.asarray(tokenizer.encode([text])[0], dtype=np.int64)
    lines = text.split("\n")
    stream = []
    for i, ids in enumerate(tokenizer.encode(lines)):
        stream += ids
        if i + 1 < len(lines):
            stream.append(newline)
    return np.asarray(stream, dtype=np.int64)


def decode_lm_ids(tokenizer: Tokenizer, ids: Sequence[int] | np.ndarray) -> str:
    """The text of a token stream (the inverse of ``encode_lm_text``, up to SentencePiece's
    normalisation: each line after a newline piece loses the space SentencePiece puts before it)."""
    text = tokenizer.decode([[int(i) for i in ids]])[0]
    return text.replace("\n ", "\n") if _newline_id(tokenizer) is not None else text


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's token ids; a character outside a character vocabulary is named with its position."""
    if isinstance(tokenizer, CharTokenizer):
        for position, char in enumerate(prompt):
            if char not in tokenizer.index:
                raise ValueError(
                    f"prompt: character {char!r} (U+{ord(char):04X}) at position {position} is not in "
                    f"the model's vocabulary of {tokenizer.vocab_size} characters"
                )
        if not prompt:
            # nanoGPT starts from a newline; a vocabulary without one starts from its first character.
            return [tokenizer.index.get("\n", 0)]
        return tokenizer.encode([prompt])[0]
    ids = encode_lm_text(tokenizer, prompt).tolist() if prompt else []
    if not ids:
        newline = _newline_id(tokenizer)
        ids = [newline if newline is not None else tokenizer.bos_id]
    return ids


def lm_generate(
    model: LanguageModel,
    tokenizer: Tokenizer,
    prompt: str = "",
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> tuple[list[int], list[int]]:
    """(prompt ids, new ids): ``max_new_tokens`` sampled continuations of ``prompt``, any length.

    Within one window the KV cache (or, with ``use_cache=False``, full recomputation) feeds the
    growing context; when the context fills ``block_size`` the window slides: a fresh cache is
    primed with the last ``block_size // 2`` tokens. One seeded generator draws every token, so the
    same seed gives the same text, with or without the cache.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    block = model.config.block_size
    rng = np.random.default_rng(seed)
    context = list(prompt_ids[-block:])
    out: list[int] = []
    remaining = int(max_new_tokens)
    while remaining > 0:
        # search.sample feeds the prompt and all but the last new token: len(context) + n - 1 <= block.
        n = min(remaining, block - len(context) + 1)
        sampled = search.sample(
            model,
            np.asarray(context, dtype=np.int64),
            n,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            rng=rng,
            use_cache=use_cache,
        )
        new = [int(t) for t in np.ravel(sampled)]
        out += new
        remaining -= n
        context = context + new
        if len(context) >= block:
            context = context[-(block // 2) :]
    return prompt_ids, out


def lm_eval_windows(num_tokens, block_size, stride=None):
    """[(start, length, first_scored)]: the windows that score every token of a stream but the first once.

    Window ``ids[start:start+length]`` predicts ``ids[start+1:start+length+1]``; only its positions
    ``>= first_scored`` count (the earlier ones were scored by the previous window). ``stride=None`` or
    ``block_size``: non-overlapping windows (``sequential_windows``; context 0..L-1, as in training).
    A smaller stride slides the window, so every token after the first window is predicted from at
    least ``block_size - stride`` tokens of context (the usual sliding-window perplexity).
    """
    stride = block_size if stride is None else int(stride)
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be between 1 and block_size={block_size}, got {stride}")
    windows, scored_until, start = [], 0, 0  # targets 1..scored_until are scored
    while scored_until < num_tokens - 1:
        length = min(block_size, num_tokens - 1 - start)
        windows.append((start, length, scored_until - start))
        scored_until = start + length
        start += stride
    return windows


def evaluate_lm(
    model: LanguageModel,
    tokenizer: Tokenizer,
    ids: np.ndarray,
    *,
    stride: int | None = None,
    ngram: int = 0,
    ngram_train_ids: np.ndarray | None = None,
    carry_state: bool = False,
) -> dict:
    """What ``lm-eval`` reports for a token stream: loss, perplexity and bits per token/character/byte of the model
    (every token but the first predicted once, ``lm_split_loss``); with ``ngram`` the Kneser-Ney baseline of that
    order, fitted on ``ngram_train_ids``, on the very same predicted tokens. ``carry_state`` (a recurrent LM trained
    with stream batching): the state carried over the whole stream, in segments of block_size (no stride)."""
    block = model.config.block_size
    stride = None if carry_state else stride or max(block // 2, 1)
    loss, count = lm_split_loss(model, ids, block, stride=stride, streams=1 if carry_state else None)
    # Bits per character/byte divide the same total by the characters/UTF-8 bytes the predicted tokens spell.
    predicted_text = decode_lm_ids(tokenizer, ids[1:])
    chars, n_bytes = max(len(predicted_text), 1), max(len(predicted_text.encode("utf-8")), 1)
    result = {
        "tokens": count,
        "characters": chars,
        "bytes": n_bytes,
        "tokenizer": tokenizer.config().get("kind"),
        "block_size": block,
        "stride": stride,
        **({"state": "carried over the split"} if carry_state else {}),
        "transformer": lm_scores(loss, count, chars, n_bytes),
    }
    if ngram:
        from .ngram import KneserNeyLM

        lm = KneserNeyLM(ngram, tokenizer.vocab_size).fit(ngram_train_ids)
        log_probs = lm.token_log_probs(ids)[1:]  # the same targets as the transformer's
        result["ngram"] = {"order": ngram, **lm_scores(float(-log_probs.mean()), count, chars, n_bytes)}
    return result


def lm_split_loss(
    model: LanguageModel,
    ids: np.ndarray,
    block_size: int,
    batch_size: int = 32,
    stride: int | None = None,
    streams: int | None = None,
) -> tuple[float, int]:
    """Mean loss (nats per token) over a whole split, and the number of tokens predicted (len - 1).

    Every token but the first is predicted exactly once, from the tokens before it in its window
    (``lm_eval_windows``: non-overlapping by default, sliding with ``stride``). Windows of equal
    length go through the model ``batch_size`` at a time (B, L); the sum is float64.

    ``streams`` = K (recurrent LMs, as PyTorch's word_language_model example evaluates them): the split is cut into
    K contiguous sub-streams read ``block_size`` tokens at a time, each segment from the state the previous one ended
    in, so every token is predicted from all the tokens before it in its sub-stream (K = 1: the whole split, what one
    forward pass over it gives).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < 2:
        raise ValueError(f"cannot evaluate a split of {len(ids)} token(s): at least 2 are needed")
    if streams is not None:
        return _carried_state_loss(model, ids, block_size, streams)
    windows = lm_eval_windows(len(ids), block_size, stride)
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for window in windows:
        by_length.setdefault(window[1], []).append(window)
    total, count = 0.0, 0
    model.eval()
    with ng.no_grad():
        for length, group in by_length.items():
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                offsets = np.arange(length)
                x = np.stack([ids[start + offsets] for start, _, _ in chunk])  # (B, L)
                y = np.stack([ids[start + 1 + offsets] for start, _, _ in chunk])  # (B, L)
                logits = model(x)  # (B, L, V)
                losses = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
                ).data.reshape(len(chunk), length)
                scored = offsets[None, :] >= np.array([first for _, _, first in chunk])[:, None]  # (B, L)
                total += float(losses.astype(np.float64)[scored].sum())
                count += int(scored.sum())
    assert count == len(ids) - 1, (count, len(ids))
    return total / count, count


def _carried_state_loss(model, ids: np.ndarray, block_size: int, streams: int) -> tuple[float, int]:
    """``lm_split_loss`` with the state carried along ``streams`` sub-streams. The n = len - 1 targets are cut into
    B = streams rows of w = ceil(n / B) consecutive targets; row b reads ids[b w : b w + w + 1] (one token more
    than it predicts: its first token is context only), the end of the last rows beyond the split masked out."""
    if not hasattr(model, "forward_state"):
        raise ValueError(f"carrying a state between segments needs a recurrent LM, not a {type(model).__name__}")
    if streams < 1 or block_size < 1:
        raise ValueError(f"streams and block_size must be positive, got {streams} and {block_size}")
    n = len(ids) - 1
    width = -(-n // streams)
    positions = np.arange(streams)[:, None] * width + np.arange(width + 1)[None, :]  # (B, w + 1)
    real = positions <= n  # (B, w + 1) the padding is at the ends of rows: it never feeds a scored position
    rows = ids[np.minimum(positions, n)]  # (B, w + 1)
    total, count, state = 0.0, 0, None
    model.eval()
    with ng.no_grad():
        for start in range(0, width, block_size):
            end = min(start + block_size, width)
            x, y = rows[:, start:end], rows[:, start + 1 : end + 1]  # (B, T)
            logits, state = model.forward_state(x, state)  # (B, T, V)
            losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none").data
            scored = real[:, start + 1 : end + 1].reshape(-1)
            total += float(losses.astype(np.float64)[scored].sum())
            count += int(scored.sum())
    assert count == n, (count, n)
    return total / count, count
