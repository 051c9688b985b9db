"""Run configurations: TOML files under configs/, with any key overridable on the command line.

A config has sections ``[data]``, ``[tokenizer]``, ``[model]``, ``[train]`` and ``[run]``. On the
command line, ``train.max_steps=100`` (or ``--train.max_steps 100``) replaces one key; values are
parsed as TOML (``model.norm_first=true``, ``train.betas=[0.9,0.98]``, ``data.corpus="tatoeba"``),
and a bare word that is not valid TOML is taken as a string (``data.corpus=tatoeba``).
"""

from __future__ import annotations

import copy
from typing import Any
import re
import tomllib
from pathlib import Path

import numpy as np

# The reference configs ship inside the package (also reachable as configs/ at the top of the repository).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

SECTIONS = ("data", "tokenizer", "model", "train", "run")


class ConfigError(ValueError):
    pass


def find_config(name_or_path) -> Path:
    """A path, or a name of a file in configs/ (``multi30k_de_en`` or ``multi30k_de_en.toml``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.toml"):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.toml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"config {name_or_path!r} not found (neither a file nor one of configs/: {', '.join(available)})")


RUN_KEYS = ("dir", "config_file")


def load_config(name_or_path, overrides=()) -> dict:
    path = find_config(name_or_path)
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML config (not UTF-8 text)") from None
    config = check_structure(config, str(path))
    config = apply_overrides(config, overrides)
    config["run"].setdefault("config_file", str(path))
    return config


def check_structure(config, where: str) -> dict:
    """A config is a table of known sections, each a table (the [run] section's keys known too); missing sections
    are added empty. ``where`` names the file in messages."""
    if not isinstance(config, dict):
        raise ConfigError(
            f"{where}: a config must be a table of sections {list(SECTIONS)}, got {type(config).__name__}"
        )
    unknown = [key for key in config if key not in SECTIONS]
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; expected {list(SECTIONS)}")
    for section, value in config.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of keys, got {value!r}")
    config = {section: dict(config.get(section, {})) for section in SECTIONS}
    try:
        check_keys("run", config["run"], RUN_KEYS)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    return config


def read_json_config(path) -> dict:
    """A run's saved config.json, checked like a config file; errors name the file."""
    import json

    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a JSON config (not UTF-8 text)") from None
    except ValueError as error:
        raise ConfigError(
            f"{path}: not valid JSON ({error}); the file is damaged: restore it, or delete it to "
            "resume with the configuration saved in the run's last checkpoint"
        ) from None
    return check_structure(config, str(path))


def parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: dict, overrides) -> dict:
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.max_steps=100)")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-")
        if "." not in key:
            raise ConfigError(f"override {item!r}: the key must name its section, e.g. train.{key}")
        section, name = key.split(".", 1)
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; expected one of {list(SECTIONS)}")
        config.setdefault(section, {})[name] = parse_value(value.strip())
    return config


_OVERRIDE_FLAG = re.compile(r"--[A-Za-z_]\w*\.[A-Za-z_]\w*(=|$)")


def normalise_cli_overrides(argv):
    """``--train.max_steps 100`` -> ``train.max_steps=100``; ``train.max_steps=100`` is kept.

    Only items shaped like an override flag (``--section.key`` or ``--section.key=value``) are touched, so an option
    value such as a prompt "--Enter ROMEO. Hi" passes through; a flag's separate value may not itself be an option.
    """
    out, i = [], 0
    while i < len(argv):
        item = argv[i]
        if _OVERRIDE_FLAG.match(item):
            if "=" in item:
                out.append(item[2:])
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.append(f"{item[2:]}={argv[i + 1]}")
                i += 1
            else:
                raise ConfigError(f"override {item} has no value")
        else:
            out.append(item)
        i += 1
    return out


def check_keys(section: str, given: dict, allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {unknown}; known keys: {sorted(allowed)}")


# ------------------------------------------------------------------------------------------------ numbers and ranges
# Every number a user gives (a config key, an override, a command-line option, a model config read from a
# checkpoint) is checked here, against one table, with the allowed range in the message.


class Number:
    """A numeric setting's type and allowed range: ``Number(int, 1)`` is a whole number >= 1,
    ``Number(float, 0, 1, hi_open=True)`` a number in [0, 1), ``Number(float, 0, lo_open=True)`` one > 0."""

    def __init__(self, kind, lo=None, hi=None, *, lo_open=False, hi_open=False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open

    def describe(self) -> str:
        what = "a whole number" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            return f"{what} in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {self.lo}"
        if self.hi is not None:
            return f"{what} {'<' if self.hi_open else '<='} {self.hi}"
        return what

    def check(self, where: str, value: Any) -> int | float:
        """``value`` as an int/float, or ConfigError: '{where} must be {range}, got {value!r}'."""
        bad = ConfigError(f"{where} must be {self.describe()}, got {value!r}")
        if isinstance(value, (np.integer, np.floating)):
            value = value.item()  # a NumPy scalar
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # bool is an int: refused too
            raise bad
        if self.kind is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ConfigError(f"{where} must be {self.describe()} (a whole number), got {value!r}")
                value = int(value)  # max_steps = 2e3 -> 2000
        else:
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise bad
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise bad
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise bad
        return value

    def option(self, flag: str):
        """An argparse ``type=`` for a command-line option (argparse's message names the flag; this one the range)."""
        import argparse

        def parse(text):
            try:
                return self.check(flag, parse_number(text))
            except (ValueError, ConfigError):
                raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None

        parse.__name__ = flag
        return parse


def parse_number(text: str):
    """'5' -> 5, '2.5' / '1e-3' -> float; anything else raises ValueError."""
    try:
        return int(text)
    except ValueError:
        return float(text)


POSITIVE_INT, NON_NEGATIVE_INT = Number(int, 1), Number(int, 0)
POSITIVE, NON_NEGATIVE = Number(float, 0, lo_open=True), Number(float, 0)
PROBABILITY_BELOW_1 = Number(float, 0, 1, hi_open=True)  # dropout, label smoothing, betas
FRACTION_OPEN = Number(float, 0, 1, lo_open=True, hi_open=True)  # a split between two non-empty parts

MAX_POSITIONS = 1 << 16

# section -> key -> Number. Keys missing here are not numbers (strings, booleans, lists checked elsewhere).
RANGES = {
    "train": dict(
        lr=NON_NEGATIVE,
        min_lr=NON_NEGATIVE,
        warmup_steps=NON_NEGATIVE_INT,
        eps=POSITIVE,
        momentum=PROBABILITY_BELOW_1,
        weight_decay=NON_NEGATIVE,
        label_smoothing=PROBABILITY_BELOW_1,
        clip_norm=NON_NEGATIVE,
        accumulate=POSITIVE_INT,
        max_tokens=POSITIVE_INT,
        batch_size=POSITIVE_INT,
        max_steps=NON_NEGATIVE_INT,
        max_epochs=NON_NEGATIVE_INT,
        max_minutes=NON_NEGATIVE,
        validate_every=POSITIVE_INT,
        checkpoint_every=NON_NEGATIVE_INT,
        keep_last=POSITIVE_INT,
        patience=NON_NEGATIVE_INT,
        log_every=POSITIVE_INT,
        seed=NON_NEGATIVE_INT,
        eval_iters=POSITIVE_INT,
        bleu_beam=POSITIVE_INT,
        distill_weight=Number(float, 0, 1),
        distill_temperature=POSITIVE,
        lora_rank=NON_NEGATIVE_INT,
        lora_alpha=NON_NEGATIVE,
        lora_dropout=PROBABILITY_BELOW_1,
        bleu_max_sentences=NON_NEGATIVE_INT,
        decode_max_tokens=POSITIVE_INT,
    ),
    "data": dict(
        src_column=NON_NEGATIVE_INT,
        tgt_column=NON_NEGATIVE_INT,
        split_seed=NON_NEGATIVE_INT,
        max_tokens=NON_NEGATIVE_INT,
        max_chars=NON_NEGATIVE_INT,
        max_ratio=NON_NEGATIVE,
        train_fraction=FRACTION_OPEN,
        mask_prob=FRACTION_OPEN,  # masked-LM pre-training: the share of pieces predicted
        valid_texts=POSITIVE_INT,
        train_lines=NON_NEGATIVE_INT,
        train_weight=POSITIVE,
        context_turns=POSITIVE_INT,  # dialogue: turns before a response that the model reads
        truncate_src=NON_NEGATIVE_INT,  # summarisation/dialogue: source sub-words kept (0: what the model holds)
    ),  # valid_size/test_size: a count or a fraction
    "tokenizer": dict(
        vocab_size=Number(int, 8),
        character_coverage=Number(float, 0, 1, lo_open=True),
        input_sentence_size=POSITIVE_INT,
        seed=NON_NEGATIVE_INT,
        sample_alpha=NON_NEGATIVE,
        nbest=Number(int, -1),
    ),
    "model": dict(
        src_vocab_size=POSITIVE_INT,
        tgt_vocab_size=POSITIVE_INT,
        vocab_size=POSITIVE_INT,
        d_model=POSITIVE_INT,
        n_heads=POSITIVE_INT,
        d_ff=POSITIVE_INT,
        num_encoder_layers=POSITIVE_INT,
        num_decoder_layers=POSITIVE_INT,
        n_layers=POSITIVE_INT,
        d_hidden=POSITIVE_INT,  # the recurrent and feed-forward LMs' hidden size (transformer/rnn.py)
        context_size=POSITIVE_INT,  # the feed-forward n-gram LM's n - 1
        # Position tables of max_len x d_model: beyond 65,536 positions a typo, not a model for a CPU.
        max_len=Number(int, 2, MAX_POSITIONS),
        block_size=Number(int, 1, MAX_POSITIONS),
        max_relative_distance=POSITIVE_INT,
        dropout=PROBABILITY_BELOW_1,
        attention_dropout=PROBABILITY_BELOW_1,
        pad_id=NON_NEGATIVE_INT,
        unk_id=NON_NEGATIVE_INT,
        bos_id=NON_NEGATIVE_INT,
        eos_id=NON_NEGATIVE_INT,
        seed=NON_NEGATIVE_INT,
        init_std=POSITIVE,
        num_labels=Number(int, 2),
        cls_id=NON_NEGATIVE_INT,
    ),
}


# section -> key -> the values a string setting may take (checked by check_choices).
CHOICES = {
    "data": dict(batching=("windows", "stream")),  # lm-train: random windows, or truncated BPTT over sub-streams
}


def check_choices(section: str, values: dict) -> None:
    """ConfigError naming the key and its allowed values if a key of ``CHOICES[section]`` has another value."""
    for key, allowed in CHOICES.get(section, {}).items():
        if key in values and values[key] not in allowed:
            raise ConfigError(f"[{section}] {key} must be one of {', '.join(allowed)}, got {values[key]!r}")


def check_numbers(section: str, values: dict) -> dict:
    """``values`` with every key of ``RANGES[section]`` checked (and whole floats made ints); None is left alone
    (an optional setting that is off)."""
    ranges = RANGES[section]
    out = dict(values)
    for key, value in values.items():
        if key in ranges and value is not None:
            out[key] = ranges[key].check(f"[{section}] {key}", value)
    return out


def check_split_size(where: str, value):
    """A split size: a whole count >= 0, or a fraction in [0, 1)."""
    if isinstance(value, float):
        if 0.0 <= value < 1.0:
            return value
        raise ConfigError(f"{where} must be a whole count >= 0 or a fraction in [0, 1), got {value!r}")
    return Number(int, 0).check(where + " (a count, or a fraction in [0, 1))", value)
