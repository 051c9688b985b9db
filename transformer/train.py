"""The training loop, shared by translation and language modelling.

One loop, two tasks (``transformer/tasks.py``). A task supplies the model, the batches and the loss;
the loop owns everything else: the optimizer and its schedule, gradient accumulation and clipping,
periodic validation, checkpoints (best and last N), early stopping, the time and step budgets,
the progress line, the JSON-lines log, Ctrl-C, and exact resume.

Exact resume: a checkpoint holds the weights, the optimizer moments, the schedule step, every RNG
state (each Dropout's generator, the task's data generator) and the position in the data order.
A run stopped at any point (Ctrl-C, ``kill -9``: checkpoints are written atomically) and resumed with
``--resume`` from its last checkpoint performs exactly the updates the uninterrupted run performs,
so both end with bit-identical weights. Validation runs in eval mode and draws no random numbers,
and saving a checkpoint changes no state, so neither disturbs the training trajectory.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

import npgrad as ng
from npgrad import nn, optim

from .checkpoint import CheckpointManager, save_checkpoint
from .console import Progress, clock, log
from .files import write_atomic
from .gradflow import GradientFlow, warning as gradient_warning
from .config import PROBABILITY_BELOW_1, ConfigError, check_keys, check_numbers

if TYPE_CHECKING:
    from .tasks import LMTask, TranslationTask

    Task = Union[TranslationTask, LMTask]

TRAIN_DEFAULTS = dict(
    optimizer="adam",  # adam | adamw | sgd
    lr=7e-4,  # peak learning rate (the schedule scales it)
    min_lr=0.0,  # cosine: the floor
    lr_schedule="inverse_sqrt",  # inverse_sqrt | cosine | constant
    warmup_steps=4000,
    betas=[0.9, 0.98],
    eps=1e-9,
    momentum=0.0,
    weight_decay=0.0,
    label_smoothing=0.1,
    clip_norm=0.0,  # 0: no clipping
    accumulate=1,  # batches per update
    max_tokens=4096,  # translation: tokens per batch (padded size)
    batch_size=12,  # LM: windows per batch
    max_steps=0,  # 0: no step budget
    max_epochs=0,  # 0: no epoch budget (translation)
    max_minutes=0.0,  # 0: no time budget
    validate_every=1000,
    checkpoint_every=0,  # 0: at every validation
    keep_last=5,
    patience=0,  # early stopping after this many validations without improvement; 0: never
    log_every=50,  # progress line every N steps (the JSON log gets every step)
    seed=1,
    eval_iters=20,  # LM: validation batches per split
    bleu_beam=1,  # translation: beam size of validation decoding
    bleu_max_sentences=0,  # translation: 0 = the whole validation set
    decode_max_tokens=8000,  # translation: tokens per decoding batch
    # Starting from another run's weights (fine-tuning); see init_from_checkpoint.
    init_from="",  # a checkpoint or run directory ("" = random initial weights); --init-from sets it
    init_reset=[],  # parameter-name patterns not loaded (kept at their fresh initial values), e.g. ["lm_head.*"]
    init_strict=True,  # refuse missing / unexpected / mis-shaped parameters (False: report them, keep fresh ones)
    init_extend_vocab=False,  # a larger vocabulary: copy the checkpoint's rows, keep the new rows fresh
    freeze=[],  # parameter-name patterns that do not train (no gradient computed, no optimizer state)
    # Word-level knowledge distillation from a teacher checkpoint with the same tokenizer; see tasks.token_loss.
    distill_from="",  # the teacher: a checkpoint or run directory ("" = none); --teacher sets it
    distill_weight=0.5,  # w in (1 - w) * label loss + w * T^2 KL(teacher || student)
    distill_temperature=1.0,  # T, softening both distributions
    # LoRA (Hu et al. 2021): low-rank adapters on the Linear layers matching lora_targets; everything else frozen.
    lora_rank=0,  # r (0 = no adapters)
    lora_alpha=0.0,  # the update is scaled by alpha / r (0 = alpha = r)
    lora_dropout=0.0,  # dropout on the adapters' input
    lora_targets=["*attn.*"],  # module-name patterns: every attention projection by default
)


# Keys that mean something to one task only: the other refuses them rather than ignore them silently.
TASK_ONLY_KEYS = {
    "translation": ("max_tokens", "max_epochs", "bleu_beam", "bleu_max_sentences", "decode_max_tokens"),
    "lm": ("batch_size", "eval_iters"),
}
# Token-count batches over epochs serve the encoder-only tasks (transformer/classify.py) too.
SHARED_KEYS = {"classify": ("max_tokens", "max_epochs"), "mlm": ("max_tokens", "max_epochs")}


def train_settings(section: dict, kind: str | None = None) -> dict:
    """The [train] section over the defaults, every number checked against its range (config.RANGES); with
    ``kind`` ("translation" or "lm") the other task's keys are refused (a language model samples windows at random:
    it has no epochs, no token-count batches, no BLEU)."""
    check_keys("train", section, TRAIN_DEFAULTS)
    settings = check_numbers("train", {**TRAIN_DEFAULTS, **section})
    for other, keys in TASK_ONLY_KEYS.items():
        given = sorted(set(section) & set(keys) - set(SHARED_KEYS.get(kind or "", ())))
        if kind is not None and other != kind and given:
            from .checkpoint import KIND_NAMES

            name = "a translation model" if other == "translation" else "a language model"
            raise ConfigError(f"[train] {', '.join(given)}: only for {name}; this is a {KIND_NAMES[kind]} run")
    betas = settings["betas"]
    if not isinstance(betas, list) or len(betas) != 2:
        raise ConfigError(f"[train] betas must be a list of two numbers in [0, 1), got {betas!r}")
    settings["betas"] = [PROBABILITY_BELOW_1.check(f"[train] betas[{i}]", b) for i, b in enumerate(betas)]
    for key in ("init_strict", "init_extend_vocab"):
        if not isinstance(settings[key], bool):
            raise ConfigError(f"[train] {key} must be true or false, got {settings[key]!r}")
    for key in ("init_reset", "freeze", "lora_targets"):
        if not isinstance(settings[key], list) or not all(isinstance(p, str) for p in settings[key]):
            raise ConfigError(f"[train] {key} must be a list of name patterns (strings), got {settings[key]!r}")
    for key in ("init_from", "distill_from"):
        if not isinstance(settings[key], str):
            raise ConfigError(f"[train] {key} must be a checkpoint path, got {settings[key]!r}")
    for key, choices in (
        ("optimizer", ("adam", "adamw", "sgd")),
        ("lr_schedule", ("inverse_sqrt", "cosine", "constant")),
    ):
        if settings[key] not in choices:
            raise ConfigError(f"[train] {key} must be one of {', '.join(choices)}, got {settings[key]!r}")
    if settings["max_steps"] <= 0 and settings["max_epochs"] <= 0 and settings["max_minutes"] <= 0:
        raise ConfigError("[train] needs a budget: set max_steps, max_epochs or max_minutes (all are 0)")
    if settings["lr_schedule"] == "cosine":  # said here by option, before a run directory or tokenizer is made
        steps, warmup = settings["max_steps"], settings["warmup_steps"]
        if steps > 0 and steps < warmup:
            raise ConfigError(
                f"[train] lr_schedule='cosine': train.max_steps={steps} is shorter than train.warmup_steps={warmup}; "
                "the decay needs max_steps >= warmup_steps (lower warmup_steps or raise max_steps)"
            )
        if settings["min_lr"] > settings["lr"]:
            raise ConfigError(
                f"[train] lr_schedule='cosine': train.min_lr={settings['min_lr']} is above train.lr={settings['lr']}"
            )
    return settings


# How a training process ends, as its exit code: a signal's stop saves a checkpoint first, then exits as shells and
# schedulers expect (128 + the signal's number).
EXIT_CODES = {"interrupted": 130, "terminated": 143}


def check_fresh_run_dir(run_dir: str | os.PathLike) -> None:
    """A new run must not mix its log and checkpoints with an earlier run's (say how to go on instead), nor live
    inside another run's checkpoints, which rotation deletes."""
    from .checkpoint import checkpoint_area

    run_dir = Path(run_dir)
    inside = checkpoint_area(run_dir)
    if inside is not None:
        raise FileExistsError(
            f"--run-dir {run_dir} is inside {inside}, which a run's checkpoint rotation deletes; "
            "choose a directory of its own"
        )
    log_path = run_dir / "log.jsonl"
    has_log = log_path.is_file() and log_path.stat().st_size > 0
    if CheckpointManager(run_dir / "checkpoints").last() is not None:
        raise FileExistsError(
            f"{run_dir} already holds a training run with checkpoints; continue it with --resume, "
            "or choose another --run-dir"
        )
    if has_log:
        raise FileExistsError(
            f"{run_dir} holds a training run that stopped before its first checkpoint ({log_path}); "
            "start it again from step 0 with --resume, or choose another --run-dir"
        )


# [data] keys a resumed run may change: where the files are (their content is checked against the run's record).
# Any other data setting changes the split or the filtering, so the saved data position would mean other pairs.
DATA_PATH_KEYS = ("data_dir", "src_path", "tgt_path", "tsv_path", "text_path", "train_src_path", "train_tgt_path")


def resume_config(run_dir: str | os.PathLike, overrides: Sequence[str], kind: str) -> dict:
    """The configuration a ``--resume`` of ``run_dir`` continues with: the run's own config.json (or, if that was
    lost, the copy in its last checkpoint) with ``overrides`` on top. Refused: a directory with no run, a run of the
    other ``kind`` ("translation" or "lm"), and overrides that would change the run's data split."""
    from .checkpoint import KIND_NAMES, checkpoint_kind, read_manifest_fields
    from .config import apply_overrides, read_json_config

    run_dir = Path(run_dir)
    path, last = run_dir / "config.json", CheckpointManager(run_dir / "checkpoints").last()
    fields = read_manifest_fields(last) if last is not None else None
    if fields is not None:
        found = checkpoint_kind(fields["config"])
        if found != kind:
            from .checkpoint import TRAIN_COMMANDS

            command = TRAIN_COMMANDS[found]
            raise ConfigError(f"--resume: {run_dir} is a {KIND_NAMES[found]} run; resume it with {command}")
    if path.is_file():
        saved = read_json_config(path)
    elif fields is not None and (fields["train_state"] or {}).get("run_config"):
        saved = fields["train_state"]["run_config"]
        log.warning(f"{path} is missing: resuming with the configuration saved in {last}")
    else:
        raise ConfigError(
            f"--resume: {run_dir} holds no training run to resume (no config.json, no checkpoint); "
            "check the --run-dir, or start a new run without --resume"
        )
    config = apply_overrides(saved, overrides)
    from .mixing import absolute_corpus_paths

    absolute_corpus_paths(config["data"].get("train_corpora"))  # as the run recorded them: the same files compare equal
    changed = sorted(
        key
        for key in set(saved["data"]) | set(config["data"])
        if key not in DATA_PATH_KEYS and saved["data"].get(key) != config["data"].get(key)
    )
    if changed:
        raise ConfigError(
            f"--resume: data.{', data.'.join(changed)} cannot change in a resumed run (the split and the "
            "saved position in the data would no longer match); start a new run for other data settings"
        )
    for key in ("sample_alpha", "nbest"):  # allowed (the epoch's examples stay the same pairs), but never unsaid
        before, after = (saved.get("tokenizer") or {}).get(key), (config.get("tokenizer") or {}).get(key)
        if before != after:
            log.warning(
                f"--resume: tokenizer.{key} changes from {before!r} to {after!r}: the training sentences are "
                "segmented differently from here on, so the run is no longer the one it started as"
            )
    log.info(
        f"resuming with {path if path.is_file() else last} (the run's own configuration; overrides on this "
        "command line apply on top, edits to the config file do not)"
    )
    return config


def tokenizer_files_differing(tok_dir: Path, fields: dict) -> tuple[list[str], list[str]]:
    """(missing, different): the tokenizer files a checkpoint holds (``read_manifest_fields``) that ``tok_dir`` lacks,
    or holds with other contents (size and SHA-256 against the checkpoint's records)."""
    from .datasets import sha256_of

    missing, different = [], []
    for name in fields["extra_files"]:
        record, path = fields["files"].get(name), tok_dir / name
        if record is None:
            continue
        if not path.is_file():
            missing.append(name)
        elif path.stat().st_size != record["bytes"] or sha256_of(path) != record["sha256"]:
            different.append(name)
    return missing, different


def check_run_tokenizer(run_dir: str | os.PathLike) -> None:
    """Before a resume: the run's tokenizer must be the one its last checkpoint was trained with (the checkpoint
    holds a checksummed copy). A missing file is restored from that copy; a different one is refused."""
    from .checkpoint import read_manifest_fields

    run_dir = Path(run_dir)
    last = CheckpointManager(run_dir / "checkpoints").last()
    if last is None:
        return
    tok_dir = run_dir / "tokenizer"
    missing, different = tokenizer_files_differing(tok_dir, read_manifest_fields(last))
    if different:
        name = different[0]
        raise ConfigError(
            f"--resume: {tok_dir / name} differs from the tokenizer {last} was trained with; the model's "
            f"ids would mean other pieces. Restore it (cp {last / name} {tok_dir / name}) or start a new run"
        )
    for name in missing:
        tok_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(last / name, tok_dir / name)
        log.warning(f"{tok_dir / name} was missing: restored from {last}")


def build_optimizer(model: nn.Module, s: dict) -> optim.Optimizer:
    """The optimizer over the trainable parameters (frozen ones, requires_grad False, get no state)."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    kind = s["optimizer"]
    if kind == "adam":
        return optim.Adam(params, lr=s["lr"], betas=tuple(s["betas"]), eps=s["eps"], weight_decay=s["weight_decay"])
    if kind == "adamw":
        # nanoGPT's rule: decay the 2-D weights (matrices, embeddings), never biases or LayerNorm gains.
        no_decay = [name for name, p in params if p.data.ndim < 2]
        return optim.AdamW(
            params, lr=s["lr"], betas=tuple(s["betas"]), eps=s["eps"], weight_decay=s["weight_decay"], no_decay=no_decay
        )
    if kind == "sgd":
        return optim.SGD(params, lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"])
    raise ValueError(f"[train] optimizer must be adam, adamw or sgd, got {kind!r}")


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> tuple[int, int]:
    """Stop the parameters whose dotted names match any of ``patterns`` (shell-style, e.g. ``encoder_layers.*``)
    from training: requires_grad False, so the backward computes no gradient for them and the optimizer keeps no
    state. Returns (trainable, total) parameter counts. A pattern that matches nothing, or freezing everything, is
    refused."""
    names = [name for name, _ in model.named_parameters()]
    frozen: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"[train] freeze: patterns are strings, got {pattern!r}")
        matched = fnmatch.filter(names, pattern)
        if not matched:
            raise ConfigError(
                f"[train] freeze pattern {pattern!r} matches no parameter (names look like {', '.join(names[:4])}, ...)"
            )
        frozen.update(matched)
    if frozen and frozen == set(names):
        raise ConfigError(f"[train] freeze {list(patterns)} freezes every parameter: nothing would train")
    total = trainable = 0
    for name, p in model.named_parameters():
        p.requires_grad = name not in frozen
        total += p.data.size
        trainable += p.data.size if p.requires_grad else 0
    return trainable, total


def prepare_init_from(config: dict, run_dir: str | os.PathLike, kind: str) -> dict:
    """Before a new run is built from other checkpoints: ``train.init_from`` (fine-tuning: the run takes its model
    configuration, with the config's own [model] keys on top) and ``train.distill_from`` (a teacher). Each must be
    of this ``kind`` (or a run directory, meaning its best checkpoint); the run takes their tokenizer (ids must mean
    the same pieces: copied into the run unless it has one, and then it must be the same). Returns the config to
    build the run from, the resolved checkpoint paths recorded in it."""
    from .checkpoint import INIT_FROM_OTHER_KINDS, checkpoint_kind, read_manifest_fields, resolve_checkpoint

    config = {section: dict(values) for section, values in config.items()}
    for key, flag in (("init_from", "--init-from"), ("distill_from", "--teacher")):
        if not config["train"].get(key):
            continue
        directory = resolve_checkpoint(config["train"][key])
        fields = read_manifest_fields(directory)
        found = checkpoint_kind(fields["config"])
        if found != kind and not (key == "init_from" and (found, kind) in INIT_FROM_OTHER_KINDS):
            raise kind_error(f"{flag} {directory}", found, kind, "start from" if key == "init_from" else "learn from")
        config["train"][key] = str(directory.resolve())
        if key == "init_from":
            vocabulary = ("vocab_size", "src_vocab_size", "tgt_vocab_size")
            base = {name: value for name, value in fields["config"].items() if name not in vocabulary}
            config["model"] = {**base, **config["model"]}
        tok_dir = Path(run_dir) / "tokenizer"
        if not tok_dir.exists():
            tok_dir.mkdir(parents=True)
            for name in fields["extra_files"]:
                shutil.copyfile(directory / name, tok_dir / name)
            log.info(f"{flag}: the run uses the tokenizer of {directory}")
        else:
            missing, different = tokenizer_files_differing(tok_dir, fields)
            differ = [name for name in missing + different if name != "settings.json"]
            if differ:
                raise ConfigError(
                    f"{flag} {directory}: its tokenizer differs from the run's ({', '.join(differ)} in "
                    f"{tok_dir}); the vocabularies must be the same"
                )
    settings_file = Path(run_dir) / "tokenizer" / "settings.json"
    if settings_file.is_file() and (config["train"].get("init_from") or config["train"].get("distill_from")):
        config["tokenizer"] = {**json.loads(settings_file.read_text(encoding="utf-8")), **config["tokenizer"]}
    return config


def init_from_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike,
    reset: Sequence[str] = (),
    strict: bool = True,
    extend_vocab: bool = False,
) -> dict:
    """Load a checkpoint's weights into ``model`` by name (fine-tuning: the optimizer, schedule and data order stay
    fresh). Parameters matching ``reset`` keep their fresh values. Missing, unexpected and mis-shaped parameters
    are refused (``strict``) or reported and left fresh; with ``extend_vocab`` a table that only grew (a larger
    vocabulary: more rows, or more output columns) takes the checkpoint's rows and keeps the new ones fresh.
    Returns a report: loaded / reset / missing / unexpected / extended / mismatched names."""
    from .checkpoint import load_checkpoint

    checkpoint = load_checkpoint(directory)
    saved, own = checkpoint.model_state, model.state_dict()
    for pattern in reset:
        if not fnmatch.filter(own, pattern):
            raise ConfigError(f"[train] init_reset pattern {pattern!r} matches no parameter of the model")
    reset_names = {name for pattern in reset for name in fnmatch.filter(own, pattern)}
    report: dict[str, list] = {
        "loaded": [],
        "reset": sorted(reset_names),
        "missing": [],
        "unexpected": [],
        "extended": [],
        "mismatched": [],
    }
    new_state = {}
    for name, array in own.items():
        if name in reset_names:
            continue
        if name not in saved:
            report["missing"].append(name)
            continue
        value = saved[name]
        if value.shape == array.shape:
            new_state[name] = value
            report["loaded"].append(name)
        elif extend_vocab and value.ndim == array.ndim and all(a <= b for a, b in zip(value.shape, array.shape)):
            grown = array.copy()
            grown[tuple(slice(0, n) for n in value.shape)] = value
            new_state[name] = grown
            report["extended"].append(f"{name} {value.shape} -> {array.shape}")
        else:
            report["mismatched"].append(f"{name}: checkpoint {value.shape}, model {array.shape}")
    report["unexpected"] = sorted(set(saved) - set(own))
    problems = [
        f"{kind} {', '.join(report[kind][:6])}{' ...' if len(report[kind]) > 6 else ''}"
        for kind in ("missing", "unexpected", "mismatched")
        if report[kind]
    ]
    if problems and strict:
        raise ConfigError(
            f"--init-from {checkpoint.directory} does not fit the model: {'; '.join(problems)}. Match the "
            "architecture, or set train.init_reset (parts to keep fresh), train.init_extend_vocab=true (a larger "
            "vocabulary) or train.init_strict=false (load what fits)"
        )
    model.load_state_dict(new_state, strict=False)
    for line in problems:
        log.warning(f"--init-from: {line} (kept at their fresh values)")
    return report


def add_lora_adapters(model: nn.Module, settings: dict) -> list[str]:
    """LoRA adapters (npgrad.nn.add_lora) on the layers matching ``settings["lora_targets"]``, the rest of the model
    frozen; their dropout draws from the model's own generator (saved for exact resume)."""
    alpha = settings["lora_alpha"] or None
    return nn.add_lora(
        model,
        list(settings["lora_targets"]),
        int(settings["lora_rank"]),
        alpha=alpha,
        dropout=float(settings["lora_dropout"]),
        rng=getattr(model, "rng", None),
    )


def restore_lora(model: nn.Module, state: dict, run_train_settings: dict) -> bool:
    """A checkpoint of a LoRA run holds the base weights and the adapters (``...lora_A``/``...lora_B``): put the
    same adapters (rank from their shapes, alpha from the run's settings) on ``model`` before loading ``state``.
    Returns whether there were adapters (merge them, ``nn.merge_lora``, before decoding)."""
    layers = sorted(name[: -len(".lora_A")] for name in state if name.endswith(".lora_A"))
    if not layers:
        return False
    rank = int(state[layers[0] + ".lora_A"].shape[1])
    alpha = float(run_train_settings.get("lora_alpha") or 0.0)
    add_lora_adapters(model, {"lora_rank": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "lora_targets": layers})
    return True


def model_from_checkpoint(checkpoint) -> nn.Module:
    """The model of a loaded checkpoint, in eval mode: its config read strictly (every key, every type: a missing
    n_heads must never quietly become today's default); a LoRA run's adapters put back and merged into plain
    Linears; an adapters-only checkpoint (``export --adapters``) loaded onto the base checkpoint it names."""
    from .checkpoint import MANIFEST, checkpoint_kind, load_checkpoint, resolve_checkpoint, run_config_of
    from .rnn import model_classes

    kind = checkpoint_kind(checkpoint.config)
    if kind in ("classify", "mlm"):
        from .classifier import EncoderConfig, TextEncoder

        config_class, model_class = EncoderConfig, TextEncoder
    else:
        config_class, model_class = model_classes(kind, checkpoint.config)
    where = f"{checkpoint.directory / MANIFEST} config"
    model = model_class(config_class.from_dict(checkpoint.config, strict=True, where=where))
    state: dict = dict(checkpoint.model_state)
    lora_settings = run_config_of(checkpoint).get("train") or {}
    adapters_only = (checkpoint.metadata or {}).get("lora_adapters")
    if adapters_only:  # the adapters here, the weights in the base checkpoint
        base = load_checkpoint(resolve_checkpoint(adapters_only["base"]))
        state, lora_settings = {**base.model_state, **state}, {"lora_alpha": adapters_only["alpha"]}
    lora = restore_lora(model, state, lora_settings)
    model.load_state_dict(state)
    if lora:
        nn.merge_lora(model)
    model.eval()
    return model


def kind_error(what: str, found: str, expected: str, verb: str) -> ConfigError:
    """'<what> is a language-model checkpoint; a translation model cannot <verb> it' (and the other way)."""
    from .checkpoint import KIND_NAMES

    model = {"lm": "language model", "classify": "text classifier", "mlm": "masked language model"}
    return ConfigError(
        f"{what} is a {KIND_NAMES[found]} checkpoint; a {model.get(expected, 'translation model')} cannot {verb} it"
    )


def load_teacher(directory: str | os.PathLike, student: nn.Module) -> nn.Module:
    """The teacher of word-level distillation, in eval mode and never trained: a checkpoint of the student's kind
    whose vocabulary is the student's (the same tokenizer: prepare_init_from copies it)."""
    from .checkpoint import checkpoint_kind, load_checkpoint, resolve_checkpoint

    checkpoint = load_checkpoint(resolve_checkpoint(directory))
    where = f"--teacher {checkpoint.directory}"
    found, expected = checkpoint_kind(checkpoint.config), checkpoint_kind(student.config.to_dict())
    if found != expected:
        raise kind_error(where, found, expected, "learn from")
    teacher = model_from_checkpoint(checkpoint)
    sizes = ("vocab_size",) if found == "lm" else ("src_vocab_size", "tgt_vocab_size")
    differ = [
        f"{k} {getattr(teacher.config, k)} vs the student's {getattr(student.config, k)}"
        for k in sizes
        if getattr(teacher.config, k) != getattr(student.config, k)
    ]
    if differ:
        raise ConfigError(
            f"{where}: the teacher's vocabulary differs from the student's ({'; '.join(differ)}); "
            "the student must use the teacher's tokenizer (a new run takes it from --teacher)"
        )
    teacher.requires_grad_(False)
    log.info(f"distilling from {checkpoint.directory} ({teacher.num_parameters():,} parameters)")
    return teacher


def build_schedule(optimizer: optim.Optimizer, s: dict, total_steps: int) -> optim.LRSchedule:
    kind = s["lr_schedule"]
    if kind == "inverse_sqrt":
        return optim.InverseSqrtSchedule(optimizer, peak_lr=s["lr"], warmup_steps=int(s["warmup_steps"]))
    if kind == "cosine":
        if total_steps <= 0:
            raise ValueError("[train] lr_schedule='cosine' needs max_steps (the length of the decay)")
        return optim.WarmupCosineSchedule(
            optimizer,
            peak_lr=s["lr"],
            warmup_steps=int(s["warmup_steps"]),
            total_steps=int(total_steps),
            min_lr=s["min_lr"],
        )
    if kind == "constant":
        return optim.ConstantSchedule(optimizer, lr=s["lr"], warmup_steps=int(s["warmup_steps"]))
    raise ValueError(f"[train] lr_schedule must be inverse_sqrt, cosine or constant, got {kind!r}")


class _NoLog:
    """The log of a rank that does not write (data-parallel ranks other than 0)."""

    def write(self, record: dict):
        pass

    def close(self):
        pass


class JsonLog:
    """Append-only JSON-lines log: one object per training step and per validation."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", encoding="utf-8")

    @staticmethod
    def rewind(path: Path, step: int) -> int:
        """Keep only the records of steps <= ``step`` (a resume from checkpoint ``step``): a run killed after its
        last checkpoint logged steps that the resumed run performs again, and a ``kill -9`` can leave half a
        line. Rewritten atomically; returns the number of lines dropped."""
        if not path.is_file():
            return 0
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                keep = isinstance(record, dict) and int(record.get("step", 0)) <= step
            except (ValueError, TypeError):
                keep = False
            if keep:
                kept.append(line + "\n")
            else:
                dropped += 1
        if dropped:
            write_atomic(path, "".join(kept))
        return dropped

    def write(self, record: dict):
        self.handle.write(json.dumps(record, allow_nan=True) + "\n")
        self.handle.flush()

    def close(self):
        self.handle.close()


class Trainer:
    """Runs a task's training to its budget; see the module docstring for what it guarantees."""

    def __init__(self, task: Task, run_dir: str | os.PathLike, settings: dict, resume: bool = False, dist=None):
        self.task, self.s = task, settings
        # Several processes training together (transformer/dist.py: DataParallel); rank 0 alone writes files.
        self.dist = dist
        writes = dist is None or dist.is_root
        self.run_dir = Path(run_dir)
        assert task.model is not None, "the task was built without its model (build_model=False)"
        self.model = task.model
        if settings["init_from"] and not resume:
            report = init_from_checkpoint(
                self.model,
                settings["init_from"],
                settings["init_reset"],
                settings["init_strict"],
                settings["init_extend_vocab"],
            )
            log.info(
                f"--init-from {settings['init_from']}: {len(report['loaded'])} parameters loaded"
                + "".join(f", {len(report[k])} {k}" for k in ("extended", "reset") if report[k])
            )
        freeze_parameters(self.model, settings["freeze"])
        if settings["lora_rank"]:
            adapted = add_lora_adapters(self.model, settings)
            log.info(
                f"LoRA rank {settings['lora_rank']} on {len(adapted)} layers ({', '.join(settings['lora_targets'])})"
            )
        if dist is not None:  # each rank's own dropout masks (drawn after LoRA took its adapters' initial weights)
            dist.seed_generators(self.model)
        trainable = sum(p.data.size for p in self.model.parameters() if p.requires_grad)
        total = sum(p.data.size for p in self.model.parameters())
        if trainable < total:
            log.info(
                f"training {trainable:,} of {total:,} parameters ({100 * trainable / total:.1f}%)"
                + (f"; frozen: {', '.join(settings['freeze'])}" if settings["freeze"] else "")
            )
        self.teacher = load_teacher(settings["distill_from"], self.model) if settings["distill_from"] else None
        self.optimizer = build_optimizer(self.model, settings)
        self.gradient_flow = GradientFlow(self.optimizer.names, self.optimizer.params)
        self.last_gradients: dict | None = None  # the per-layer record of the last step that measured it
        self.schedule = build_schedule(self.optimizer, settings, settings["max_steps"])
        self.manager = CheckpointManager(
            self.run_dir / "checkpoints", keep_last=int(settings["keep_last"]), mode=task.metric_mode
        )
        self.state: dict[str, Any] = {
            "step": 0,
            "tokens": 0,
            "elapsed": 0.0,
            "best": None,
            "bad_validations": 0,
            "last_validated": 0,
            "stopped": None,
        }
        self._stop_requested = False
        # For crash tests: TRANSFORMER_HOLD_AT_STEP=N makes the loop wait after step N (and its checkpoint)
        # until it is signalled, so a test can kill -9 or Ctrl-C it at a known step instead of racing it.
        self._hold_at_step = int(os.environ.get("TRANSFORMER_HOLD_AT_STEP") or 0)
        self._resumed_from = None
        self._stop_signal = None
        log_path = self.run_dir / "log.jsonl"
        if resume:
            if self.manager.last() is not None:
                self._resume()
            else:
                # Stopped before its first checkpoint: nothing to restore, and a fresh start is exactly the run.
                log.info(
                    f"--resume: no checkpoint under {self.manager.root} yet (the run stopped before "
                    "its first one); starting it again from step 0"
                )
            if writes:
                JsonLog.rewind(log_path, self.state["step"])
        else:
            # A fresh run in a used directory would mix its checkpoints and log records with the old run's
            # (and the old run's best checkpoint would stay "best").
            check_fresh_run_dir(self.run_dir)
        self.log = JsonLog(log_path) if writes else _NoLog()
        if self._resumed_from is not None:
            self.log.write({"type": "resume", "step": self.state["step"], "checkpoint": str(self._resumed_from)})

    # ------------------------------------------------------------------ checkpoints
    def _rngs(self):
        rngs = {f"model.{name}": rng for name, rng in self.model.named_generators()}
        rngs.update({f"task.{name}": rng for name, rng in self.task.generators().items()})
        return rngs

    def save(self, metric=None):
        ranks = self.dist.before_save(self) if self.dist is not None else None  # (all ranks; None on rank > 0)
        if self.dist is not None and not self.dist.is_root:
            return None
        # The run config rides along so that evaluate/translate find the data of any checkpoint, even a copied or
        # averaged one far from its run directory.
        train_state = dict(
            self.state,
            data=self.task.data_state(),
            run_config=getattr(self.task, "config", None),
            data_files=getattr(self.task, "data_files", None),
        )
        if ranks is not None:
            train_state["dist"] = ranks
        return self.manager.save(
            self.state["step"],
            self.model,
            self.model.config,
            metric=metric,
            optimizer=self.optimizer,
            scheduler=self.schedule,
            train_state=train_state,
            rng_states=self._rngs(),
            extra_files=self.task.extra_files(),
        )

    def _resume(self):
        last = self.manager.last()
        if last is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.manager.root} to resume from")
        # A kill during a save leaves the staging directory of an unfinished checkpoint: never read, delete it.
        for stale in self.manager.root.glob(".step-*.tmp-*") if self.dist is None or self.dist.is_root else ():
            shutil.rmtree(stale, ignore_errors=True)
        checkpoint = self.manager.load_last()
        configured = self.schedule.state_dict()
        checkpoint.restore(self.model, self.optimizer, self.schedule)
        self._apply_changed_schedule(configured)
        for name, rng in self._rngs().items():
            checkpoint.restore_rng(name, rng)
        train_state = dict(checkpoint.train_state)
        recorded, current = train_state.pop("data_files", None), getattr(self.task, "data_files", None)
        if recorded and current is not None:
            from .datasets import identity_changes

            changes = identity_changes(recorded, current)
            if changes:
                raise ValueError(
                    f"--resume: the data differs from what {last} trained on: {'; '.join(changes)}. "
                    "The saved position in the data refers to the old data; restore the files, or start "
                    "a new run on the new data"
                )
        self.task.load_data_state(train_state.pop("data"))
        train_state.pop("run_config", None)
        ranks = train_state.pop("dist", None)  # every rank's generators, saved by a data-parallel run
        if self.dist is not None:
            self.dist.resume(self, ranks)
        elif ranks is not None and ranks.get("ranks", 1) > 1:
            # One process continues with rank 0's dropout generators: the same global batches, other masks.
            log.warning(
                f"--resume: {last} was saved by {ranks['ranks']} MPI ranks and this run is one process: the same "
                "global batches, other dropout masks than the ranks would draw (a bit-exact resume needs "
                f"mpiexec -n {ranks['ranks']})"
            )
        self.state.update(train_state)
        self.state["stopped"] = None
        self._resumed_from = last
        log.info(f"resumed from {last} at step {self.state['step']}")

    def _hold(self):
        """Wait here until signalled (Ctrl-C continues to a clean stop; kill -9 just ends the process)."""
        while not self._stop_requested:
            time.sleep(0.01)

    def _apply_changed_schedule(self, configured):
        """Resuming with the same config continues exactly; where the schedule's settings in the config differ
        from the checkpoint's (e.g. a longer cosine decay for more steps), the config wins, at the saved step,
        and the change is said (never silently ignored)."""
        restored = self.schedule.state_dict()
        changed = {k: v for k, v in configured.items() if k not in ("step_num", "type") and restored.get(k) != v}
        if restored.get("type") != configured.get("type"):
            raise ValueError(
                f"--resume: the checkpoint's schedule is {restored.get('type')}, the config asks for "
                f"{configured.get('type')}; resume with the run's own train.lr_schedule"
            )
        if changed:
            self.schedule.load_state_dict({**restored, **changed})
            log.info(
                "resume: schedule settings changed by the config: "
                + ", ".join(f"{k} {restored.get(k)} -> {v}" for k, v in changed.items())
            )

    # ------------------------------------------------------------------ the loop
    def _on_stop_signal(self, signum, frame):
        """Ctrl-C (SIGINT) and SIGTERM (what ``timeout``, ``kill`` and job schedulers send) finish the step, save a
        checkpoint and stop; a second signal aborts at once without saving."""
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self._stop_signal = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        log.info(
            f"{name}: finishing this step, saving a checkpoint, then exiting (signal again to abort without saving)"
        )

    def _budget_reason(self, start_time, start_elapsed):
        s, st = self.s, self.state
        if self._stop_requested:
            return "terminated" if self._stop_signal == signal.SIGTERM else "interrupted"
        if s["max_steps"] and st["step"] >= s["max_steps"]:
            return "max_steps"
        if s["max_epochs"] and self.task.epoch >= s["max_epochs"]:
            return "max_epochs"
        if s["max_minutes"] and start_elapsed + time.perf_counter() - start_time >= 60.0 * s["max_minutes"]:
            return "max_minutes"
        return None

    def train_step(self, measure_gradients: bool = False):
        """One update: ``accumulate`` batches, loss normalised by their total token count. ``measure_gradients``
        (the logging steps): per-layer gradient norms and update ratios into ``last_gradients`` (gradflow.py)."""
        model, s = self.model, self.s
        batches = [self.task.next_batch() for _ in range(int(s["accumulate"]))]
        tokens = sum(self.task.batch_tokens(b) for b in batches)
        if self.dist is not None:  # this rank's rows of each global batch; the loss still divides by all its tokens
            batches = [shard for shard in map(self.dist.shard, batches) if shard is not None]
        self.optimizer.zero_grad()
        total_loss = 0.0
        for batch in batches:
            loss_sum = self.task.loss(
                model,
                batch,
                label_smoothing=s["label_smoothing"],
                teacher=self.teacher,
                distill=(s["distill_weight"], s["distill_temperature"]),
            )
            (loss_sum * (1.0 / tokens)).backward()
            total_loss += float(loss_sum.data)
        if self.dist is not None:  # the sum of the ranks' gradients: the whole batch's, as one process computes it
            total_loss = self.dist.all_reduce_gradients(self.optimizer.params, total_loss)
        grad_norm, norms, before, flow = None, None, None, self.gradient_flow
        self.last_gradients = None
        if measure_gradients:
            norms, before = flow.grad_norms(), flow.snapshot()
        if s["clip_norm"] and s["clip_norm"] > 0:
            grad_norm = float(optim.clip_grad_norm_(self.optimizer.params, s["clip_norm"], norms=norms))
            if norms is None and not math.isfinite(grad_norm):  # free to know every step: say which layer
                self.last_gradients = flow.record(flow.grad_norms())
        lr = self.optimizer.lr
        self.optimizer.step()
        self.schedule.step()
        if norms is not None:
            self.last_gradients = flow.record(norms, before)
        return total_loss / tokens, tokens, lr, grad_norm

    def validate(self):
        self.model.eval()
        try:
            with ng.no_grad():
                metrics = self.task.validate(self.model, self.s)
        finally:
            self.model.train()
        return metrics

    def _improved(self, value):
        best = self.state["best"]
        if best is None:
            return True
        return value > best if self.task.metric_mode == "max" else value < best

    def run(self):
        s, st = self.s, self.state
        self.model.train()
        previous_handlers = {
            signum: signal.signal(signum, self._on_stop_signal) for signum in (signal.SIGINT, signal.SIGTERM)
        }
        start_time, start_elapsed = time.perf_counter(), st["elapsed"]
        progress = Progress("step", total=s["max_steps"] or None, every=int(s["log_every"]), initial=st["step"])
        window_tokens, window_time = 0, 0.0
        checkpoint_every = int(s["checkpoint_every"] or s["validate_every"])
        saved_at = st["step"]
        try:
            while True:
                reason = self._budget_reason(start_time, start_elapsed)
                if self.dist is not None:  # every rank stops after the same step
                    reason = self.dist.agree_stop(reason)
                if reason:
                    st["stopped"] = reason
                    break
                t0 = time.perf_counter()
                loss, tokens, lr, grad_norm = self.train_step((st["step"] + 1) % int(s["log_every"]) == 0)
                dt = time.perf_counter() - t0
                st["step"] += 1
                st["tokens"] += tokens
                st["elapsed"] = start_elapsed + time.perf_counter() - start_time
                window_tokens += tokens
                window_time += dt
                record = {
                    "type": "train",
                    "step": st["step"],
                    "loss": loss,
                    "lr": lr,
                    "tokens": tokens,
                    "tok_per_s": tokens / dt if dt > 0 else None,
                    "epoch": self.task.epoch,
                    "elapsed": round(st["elapsed"], 3),
                }
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                self.log.write(record)
                if self.last_gradients is not None:
                    self.log.write({"type": "gradients", "step": st["step"], **self.last_gradients})
                    said = gradient_warning(st["step"], self.last_gradients)
                    if said:
                        log.warning(said)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"training loss became {loss} at step {st['step']} (lr {lr:.3g}); lower the learning rate "
                        f"or enable clipping (train.clip_norm); the last good checkpoint is {self.manager.last()}"
                    )
                # A bar on a terminal, else a line every log_every steps; tok/s over the steps since the last line.
                progress.update(
                    1,
                    loss=f"{loss:.4f}",
                    lr=f"{lr:.3g}",
                    **{"tok/s": f"{window_tokens / window_time:,.0f}" if window_time else "-"},
                    epoch=self.task.epoch,
                    elapsed=clock(st["elapsed"]),
                )
                if st["step"] % int(s["log_every"]) == 0:
                    window_tokens, window_time = 0, 0.0
                if st["step"] % int(s["validate_every"]) == 0:
                    if self._validate_and_save():
                        st["stopped"] = "early_stopping"
                        saved_at = st["step"]
                        break
                    saved_at = st["step"]
                elif st["step"] % checkpoint_every == 0:
                    self.save()
                    saved_at = st["step"]
                if st["step"] == self._hold_at_step:
                    self._hold()
            if st["step"] > 0 and st["last_validated"] != st["step"] and st["stopped"] not in EXIT_CODES:
                self._validate_and_save()
            elif st["step"] != saved_at:
                self.save()
        finally:
            progress.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.log.close()
        log.info(
            f"stopped ({st['stopped']}) at step {st['step']}; best {self.task.metric} "
            f"{st['best']}; checkpoints in {self.manager.root}"
        )
        return dict(st)

    def _validate_and_save(self):
        """Validate, log, save (with the metric, so the manager keeps the best); True means stop early."""
        st = self.state
        t0 = time.perf_counter()
        metrics = self.validate() if self.dist is None else self.dist.from_root(self.validate)
        value = metrics[self.task.metric]
        improved = self._improved(value)
        if improved:
            st["best"], st["bad_validations"] = value, 0
        else:
            st["bad_validations"] += 1
        st["last_validated"] = st["step"]
        self.log.write(
            {
                "type": "valid",
                "step": st["step"],
                **metrics,
                "best": st["best"],
                "seconds": round(time.perf_counter() - t0, 3),
                "elapsed": round(st["elapsed"], 3),
            }
        )
        log.info(
            "valid @ step {}: {}{}".format(
                st["step"],
                ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()),
                " (best)" if improved else "",
            )
        )
        self.save(metric=value)
        patience = int(self.s["patience"])
        return patience > 0 and st["bad_validations"] >= patience


def write_averaged_checkpoint(
    directories: Sequence[str | os.PathLike], output: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Average the weights of several checkpoints of one run into a new checkpoint directory (never over a
    training checkpoint or anything else not made by averaging; over an earlier average with ``overwrite``)."""
    from .checkpoint import average_checkpoints, check_average_output, load_checkpoint

    check_average_output(output, overwrite=overwrite)
    directories = [Path(d) for d in directories]
    averaged = average_checkpoints(directories)
    newest = load_checkpoint(directories[-1])
    extra = dict(newest.extra_files)
    save_checkpoint(
        output,
        averaged,
        newest.config,
        train_state=newest.train_state,
        extra_files=extra,
        metadata={"averaged": [str(d) for d in directories]},
    )
    log.info(f"averaged {len(directories)} checkpoints into {output}")
    return Path(output)


def seed_everything(seed: int) -> None:
    """The module-level default generator npgrad.nn uses when no rng is passed."""
    from npgrad import nn

    nn.manual_seed(int(seed))
    np.random.seed(int(seed) % (2**32))
