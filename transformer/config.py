"""Run configurations: TOML files under configs/, with any key overridable on the command line.

A config has sections ``[data]``, ``[tokenizer]``, ``[model]``, ``[train]`` and ``[run]``. On the
command line, ``train.max_steps=100`` (or ``--train.max_steps 100``) replaces one key; values are
parsed as TOML (``model.norm_first=true``, ``train.betas=[0.9,0.98]``, ``data.corpus="tatoeba"``),
and a bare word that is not valid TOML is taken as a string (``data.corpus=tatoeba``).
"""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

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


def load_config(name_or_path, overrides=()) -> dict:
    path = find_config(name_or_path)
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    unknown = [key for key in config if key not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; expected {list(SECTIONS)}")
    for section in SECTIONS:
        config.setdefault(section, {})
    config = apply_overrides(config, overrides)
    config["run"].setdefault("config_file", str(path))
    return config


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
