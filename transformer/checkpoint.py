"""Checkpoints: safetensors weights, JSON for everything else, atomic writes, loads that never execute code.

A checkpoint is a directory::

    checkpoint.json          format tag, model config, optimizer/scheduler/training state, RNG states, metadata,
                             and the size + SHA-256 of every other file (written last)
    model.safetensors        model weights (``model.state_dict()``), bit-exact
    optimizer.safetensors    the optimizer's arrays (Adam moments...), when an optimizer was given, and the arrays of
                             the training state (a recurrent LM's state carried between segments)
    <name>                   extra files copied beside (tokenizer model/vocabulary...)

Nothing is pickled. Non-array state is JSON with a few tagged forms so that the round trip is exact
(``transformer/jsonstate.py``).

Writes are atomic: the whole checkpoint is written into a temporary sibling directory, every file and the directory are
fsynced, then it is renamed into place. An existing checkpoint is replaced by an atomic exchange of the two directories
(``renameat2(RENAME_EXCHANGE)`` on Linux) and deleted only after the new one is in place; where the exchange is not
available the old one is first renamed aside to ``.<name>.old-*`` (if a crash hits between the two renames,
``load_checkpoint`` names that directory).

Loading checks every file before trusting it: a truncated file, a file that is not safetensors (a pickle, a zip, an
.npy), bad JSON, a missing file or a checksum mismatch raises :class:`CheckpointError` naming the file and the problem.
The only parsers involved are ``json`` and safetensors' header/byte reader: nothing is unpickled or executed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import fsync_path, replace_directory, write_durable
from .jsonstate import StateError, decode_state, encode_state

FORMAT = "npgrad-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
_RESERVED = {MANIFEST, MODEL_FILE, OPTIMIZER_FILE}
# Config keys that do not change the weights' meaning: ignored by default when a config is checked on load.
NON_ARCHITECTURE_KEYS = ("dropout", "attention_dropout", "seed")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, foreign or inconsistent (the message names the file)."""


def _decoded(value, where, tensors=None):
    """``jsonstate.decode_state``, its errors as CheckpointError (naming the manifest)."""
    try:
        return decode_state(value, where, tensors)
    except StateError as error:
        raise CheckpointError(str(error)) from None


# ============================================================================================== file helpers
def _file_record(path):
    data = Path(path).read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_safetensors(path, tensors, kind):
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "content": kind})
    fsync_path(path)


def _looks_like_safetensors(data):
    """An 8-byte little-endian header length that fits the file, then a JSON object: what safetensors writes. (Its
    first byte can be 0x80, a pickle's first byte too: a header of 384 + 256 k bytes.)"""
    if len(data) < 9:
        return False
    header_length = int.from_bytes(data[:8], "little")
    return 8 + header_length <= len(data) and data[8:9] == b"{"


def _sniff_foreign(data):
    """What a non-safetensors file looks like (for the error message), or None."""
    if len(data) >= 2 and data[0] == 0x80 and 1 <= data[1] <= 5:
        return "a Python pickle; refusing to load it (unpickling can execute code)"
    if data[:4] == b"PK\x03\x04":
        return "a zip archive (a PyTorch .pt/.pth or NumPy .npz file?); refusing to load it"
    if data[:6] == b"\x93NUMPY":
        return "a NumPy .npy file, not safetensors"
    if data[:1] in (b"{", b"["):
        return "JSON text, not safetensors"
    return None


def _read_safetensors(path, expected=None, order=None):
    """Arrays of the safetensors file ``path`` (writable copies), after checking it against the manifest.

    ``expected``: the {"bytes", "sha256"} record from the manifest (size and checksum catch truncation and
    corruption; safetensors' own parser checks the header and offsets); ``order``: the tensor names in the order they
    were given to save (safetensors sorts its header). Errors name the file and say what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    data = path.read_bytes()
    foreign = None if _looks_like_safetensors(data) else _sniff_foreign(data)
    if foreign:
        raise CheckpointError(f"{path}: not a safetensors file: it is {foreign}")
    if expected is not None:
        if len(data) != expected["bytes"]:
            raise CheckpointError(
                f"{path}: size {len(data)} bytes, the manifest says {expected['bytes']}: truncated "
                "or not safetensors (replaced by another file)"
            )
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise CheckpointError(f"{path}: SHA-256 checksum mismatch with the manifest (corrupted or replaced)")
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type; restate it with the file name
        raise CheckpointError(f"{path}: truncated or not safetensors: {exc}") from None
    if order is not None:
        if sorted(order) != sorted(arrays):
            raise CheckpointError(f"{path}: holds tensors {sorted(arrays)}, the manifest lists {sorted(order)}")
        return OrderedDict((name, np.array(arrays[name], copy=True)) for name in order)
    return OrderedDict((name, np.array(array, copy=True)) for name, array in sorted(arrays.items()))


def _read_manifest(directory):
    directory = Path(directory)
    if not directory.is_dir():
        hint = ""
        leftovers = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.is_dir() else []
        if leftovers:
            hint = (
                f"; an interrupted save left the previous checkpoint at {leftovers[-1]} "
                f"(rename it to {directory.name} to use it)"
            )
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist{hint}")
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing ({directory} is not an npgrad checkpoint directory)")
    data = path.read_bytes()
    foreign = _sniff_foreign(data)
    if foreign and not foreign.startswith("JSON"):
        raise CheckpointError(f"{path}: not a JSON manifest: it is {foreign}")
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not valid JSON ({exc}); the file is truncated or not a checkpoint manifest"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f'{path}: not an npgrad checkpoint manifest (no "format": "{FORMAT}")')
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {manifest.get('version')!r}; this code reads versions up to {VERSION}"
        )
    for key in ("config", "files"):
        if key not in manifest:
            raise CheckpointError(f"{path}: the manifest has no {key!r} entry")
    return path, manifest


# ============================================================================================== atomic replace
# ============================================================================================== save / load
def _config_dict(config):
    if config is None:
        raise ValueError("save_checkpoint: config_dict is required (the model cannot be rebuilt without it)")
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"save_checkpoint: config_dict must be a dict (or have to_dict()), got {type(config).__name__}")
    return dict(config)


def _model_state(model):
    if hasattr(model, "state_dict"):
        state = model.state_dict()
    elif isinstance(model, Mapping):
        state = model
    else:
        raise TypeError(
            f"save_checkpoint: model must be a Module (with state_dict()) or a state dict, got {type(model).__name__}"
        )
    out = OrderedDict()
    for name, value in state.items():
        array = np.asarray(getattr(value, "data", value))
        if array.dtype.kind not in "biuf":
            raise TypeError(f"save_checkpoint: weight {name!r} has dtype {array.dtype}; safetensors stores numbers")
        out[name] = array
    return out


_RNG_KINDS = ("numpy.Generator", "numpy.BitGenerator", "numpy.RandomState", "python.random", "state")


def _rng_record(name, rng):
    import random

    if isinstance(rng, np.random.Generator):
        return {"kind": "numpy.Generator", "state": rng.bit_generator.state}
    if isinstance(rng, np.random.BitGenerator):
        return {"kind": "numpy.BitGenerator", "state": rng.state}
    if isinstance(rng, np.random.RandomState):
        return {"kind": "numpy.RandomState", "state": rng.get_state(legacy=False)}
    if isinstance(rng, random.Random):
        return {"kind": "python.random", "state": rng.getstate()}
    if isinstance(rng, Mapping):
        return {"kind": "state", "state": dict(rng)}
    raise TypeError(
        f"save_checkpoint: rng_states[{name!r}] is a {type(rng).__name__}; give a numpy Generator, "
        "BitGenerator, RandomState, random.Random, or a bit_generator state dict"
    )


_BIT_GENERATORS = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


def _check_extra_name(name):
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or name in _RESERVED
    ):
        raise ValueError(
            f"save_checkpoint: extra file name {name!r} must be a plain file name (no directories, not "
            f"hidden, not one of {sorted(_RESERVED)})"
        )


def save_checkpoint(
    directory: str | os.PathLike,
    model: Any,
    config_dict: Any,
    optimizer: Any = None,
    scheduler: Any = None,
    train_state: dict | None = None,
    rng_states: dict | None = None,
    extra_files: dict[str, str | os.PathLike] | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write a checkpoint directory atomically; returns its path.

    model: an npgrad Module (``state_dict()``) or a state dict name -> array. config_dict: the model config (a dict
    or an object with ``to_dict()``). optimizer / scheduler: objects with ``state_dict()`` (plain dicts of arrays and
    numbers). train_state: any JSON-able dict (step, epoch, batch position, best metric...; NumPy scalars and
    arrays allowed: with an optimizer, arrays go to optimizer.safetensors). rng_states: name -> numpy Generator / BitGenerator / RandomState / random.Random / state dict.
    extra_files: name -> path of a file copied into the checkpoint under ``name`` (tokenizer files).
    metadata: a small JSON-able dict for bookkeeping (used by :class:`CheckpointManager`).

    An existing checkpoint at ``directory`` is replaced only once the new one is complete; a directory that is not a
    checkpoint is never overwritten.
    """
    target = Path(directory)
    if target.exists() and not (target.is_dir() and ((target / MANIFEST).is_file() or not any(target.iterdir()))):
        raise FileExistsError(
            f"save_checkpoint: {target} exists and is not a checkpoint directory; refusing to replace it"
        )
    config = encode_state(_config_dict(config_dict), "config")
    weights = _model_state(model)
    manifest = {"format": FORMAT, "version": VERSION, "config": config, "files": {}}
    optimizer_arrays: OrderedDict[str, np.ndarray] = OrderedDict()
    manifest["optimizer"] = (
        None if optimizer is None else encode_state(optimizer.state_dict(), "optimizer", optimizer_arrays)
    )
    manifest["scheduler"] = None if scheduler is None else encode_state(scheduler.state_dict(), "scheduler")
    # The training state's arrays (a recurrent LM's carried state) go beside the optimizer's, bit-exact.
    manifest["train_state"] = (
        None
        if train_state is None
        else encode_state(dict(train_state), "train_state", optimizer_arrays if optimizer is not None else None)
    )
    manifest["rng_states"] = {
        name: encode_state(_rng_record(name, rng), f"rng_states.{name}") for name, rng in (rng_states or {}).items()
    }
    manifest["metadata"] = encode_state(dict(metadata or {}), "metadata")
    extra = {}
    for name, source in (extra_files or {}).items():
        _check_extra_name(name)
        if not Path(source).is_file():
            raise FileNotFoundError(f"save_checkpoint: extra file {name!r}: {source} is not a file")
        extra[name] = Path(source)
    manifest["extra_files"] = sorted(extra)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_safetensors(staging / MODEL_FILE, weights, "model")
        written = [MODEL_FILE]
        if optimizer is not None:
            _write_safetensors(staging / OPTIMIZER_FILE, optimizer_arrays, "optimizer")
            written.append(OPTIMIZER_FILE)
        for name, source in extra.items():
            shutil.copyfile(source, staging / name)
            fsync_path(staging / name)
            written.append(name)
        manifest["files"] = {name: _file_record(staging / name) for name in written}
        manifest["tensor_order"] = {MODEL_FILE: list(weights), OPTIMIZER_FILE: list(optimizer_arrays)}
        # The manifest goes last: a directory with a complete manifest has all its files.
        write_durable(staging / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False).encode("utf-8"))
        fsync_path(staging, directory=True)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def check_average_output(output: str | os.PathLike, overwrite: bool = False, command: str = "average") -> None:
    """Refuse an ``average`` (or ``export``: ``command``) output that would destroy something: a training checkpoint (its optimizer state and
    data position are what lets a run resume), any other existing file or directory, a place inside a run's
    checkpoints (rotation deletes it, or takes a step-N name for a training checkpoint); an earlier average only with
    ``overwrite``."""
    target = Path(output)
    if (target / MANIFEST).is_file():
        try:
            metadata = read_manifest_fields(target)["metadata"] or {}
            averaged = any(key in metadata for key in ("averaged", "exported_from", "imported_from"))
        except (CheckpointError, OSError):
            averaged = False
        if not averaged:
            raise FileExistsError(
                f"{command} --output {target} is a training checkpoint; averaging into it would "
                "replace it with weights only and the run could no longer resume. Choose another "
                "--output"
            )
    inside = checkpoint_area(target.parent)
    if inside is not None:
        raise FileExistsError(
            f"{command} --output {target} is inside {inside}, which the run's checkpoint rotation "
            "deletes or takes for its own; choose a directory outside the run's checkpoints/"
        )
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not (target / MANIFEST).is_file():
        raise FileExistsError(f"{command} --output {target} exists and is not a checkpoint; refusing to replace it")
    if not overwrite:
        raise FileExistsError(
            f"{command} --output {target} already holds an earlier output; pass --overwrite to replace it"
        )


class _NotRead(dict):
    """The arrays of optimizer.safetensors as ``read_manifest_fields`` sees them: not read, each one None."""

    def __contains__(self, name):
        return True

    def __missing__(self, name):
        return None


def read_manifest_fields(directory: str | os.PathLike) -> dict:
    """A checkpoint's model ``config``, ``train_state``, ``metadata`` and ``files`` records, from its manifest alone
    (no weights read)."""
    manifest_path, manifest = _read_manifest(directory)
    where = str(manifest_path)
    return {
        "config": _decoded(manifest["config"], where),
        "train_state": _decoded(manifest.get("train_state"), where, _NotRead()),
        "metadata": _decoded(manifest.get("metadata") or {}, where),
        "files": manifest["files"],
        "extra_files": list(manifest.get("extra_files") or []),
    }


def checkpoint_kind(config: Mapping) -> str:
    """ "lm" for a language model's config (one vocabulary), "translation" for an encoder-decoder's; an encoder-only
    model's (transformer/classifier.py) is named by its head: "classify" or "mlm"."""
    if "head" in config:
        return "mlm" if config["head"] == "mlm" else "classify"
    return "lm" if "vocab_size" in config else "translation"


KIND_NAMES = {
    "lm": "language-model",
    "translation": "translation",
    "classify": "text-classification",
    "mlm": "masked-language-model",
}
# The command that trains each kind; kinds whose validation metric is a loss (lower is better).
TRAIN_COMMANDS = {"lm": "lm-train", "translation": "train", "classify": "classify-train", "mlm": "mlm-train"}
LOSS_METRIC_KINDS = ("lm", "mlm")
# (checkpoint kind, run kind) pairs that --init-from accepts besides a kind onto itself: pre-training -> fine-tuning.
INIT_FROM_OTHER_KINDS = {("mlm", "classify")}


def run_config_of(checkpoint: Checkpoint) -> dict:
    """The run config saved in a checkpoint (older checkpoints: its run directory's config.json)."""
    embedded = (checkpoint.train_state or {}).get("run_config")
    if embedded:
        return embedded
    path = checkpoint.directory.parent.parent / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory (its best checkpoint by the run's validation metric, else its
    last): what ``--checkpoint`` and ``--init-from`` accept."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    infos = CheckpointManager(root).checkpoints()
    if not infos:
        raise FileNotFoundError(f"{path} is neither a checkpoint nor a run directory with checkpoints")
    # The direction the run recorded (a dialogue model ranks by perplexity: lower is better); checkpoints written
    # before it was recorded: BLEU or accuracy (higher) for translation or classification, loss (lower) for an LM.
    mode = infos[-1].mode
    if mode is None:
        mode = "min" if checkpoint_kind(read_manifest_fields(infos[-1].path)["config"]) in LOSS_METRIC_KINDS else "max"
    best = CheckpointManager(root, mode=mode).best()
    return best if best is not None else infos[-1].path


def checkpoint_area(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory, or the run's ``checkpoints/`` directory, that ``path`` is or lies in (None if it
    lies in neither): a place the run manages, where nothing else may be written."""
    path = Path(path).resolve()
    for directory in (path, *path.parents):
        if (directory / MANIFEST).is_file():
            return directory
        if (
            directory.name == "checkpoints"
            and directory.is_dir()
            and any(CheckpointManager._PATTERN.match(child.name) for child in directory.iterdir())
        ):
            return directory
    return None


def check_config(saved, expected, ignore=NON_ARCHITECTURE_KEYS, where="checkpoint"):
    """Raise CheckpointError listing every key where ``saved`` and ``expected`` configs differ (``ignore`` skipped)."""
    if hasattr(expected, "to_dict"):
        expected = expected.to_dict()
    expected = _decoded(encode_state(dict(expected), "config"), "config")  # same normal form as a loaded config
    problems = []
    for key in sorted(set(saved) | set(expected)):
        if key in ignore:
            continue
        if key not in saved:
            problems.append(f"{key}: not in the checkpoint, {expected[key]!r} expected")
        elif key not in expected:
            problems.append(f"{key}: {saved[key]!r} in the checkpoint, unknown to the model")
        elif saved[key] != expected[key]:
            problems.append(f"{key}: checkpoint {saved[key]!r}, model {expected[key]!r}")
    if problems:
        raise CheckpointError(f"{where}: the model config does not match the checkpoint's:\n  " + "\n  ".join(problems))


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns. Arrays are fresh writable copies."""

    directory: Path
    config: dict
    model_state: "OrderedDict[str, np.ndarray]"
    optimizer_state: dict | None = None
    scheduler_state: dict | None = None
    train_state: dict | None = None
    rng_states: dict = field(default_factory=dict)  # name -> {"kind": ..., "state": ...}
    extra_files: dict = field(default_factory=dict)  # name -> Path inside the checkpoint
    metadata: dict = field(default_factory=dict)

    def restore(
        self,
        model=None,
        optimizer=None,
        scheduler=None,
        check_model_config=True,
        ignore_config_keys=NON_ARCHITECTURE_KEYS,
    ):
        """Load the saved states into the given objects; the model's config is checked against the saved one."""
        if model is not None:
            if check_model_config and getattr(model, "config", None) is not None:
                check_config(self.config, model.config, ignore_config_keys, where=str(self.directory))
            model.load_state_dict(self.model_state)
        if optimizer is not None:
            if self.optimizer_state is None:
                raise CheckpointError(f"{self.directory}: the checkpoint holds no optimizer state")
            optimizer.load_state_dict(self.optimizer_state)
        if scheduler is not None:
            if self.scheduler_state is None:
                raise CheckpointError(f"{self.directory}: the checkpoint holds no scheduler state")
            scheduler.load_state_dict(self.scheduler_state)

    def _rng_entry(self, name):
        if name not in self.rng_states:
            raise KeyError(f"{self.directory}: no RNG state named {name!r} (saved: {sorted(self.rng_states)})")
        return self.rng_states[name]

    def restore_rng(self, name, target):
        """Set the saved state ``name`` into ``target`` (Generator, BitGenerator, RandomState, random.Random)."""
        import random

        entry = self._rng_entry(name)
        state = entry["state"]
        if isinstance(target, np.random.Generator):
            target.bit_generator.state = state
        elif isinstance(target, np.random.BitGenerator):
            target.state = state
        elif isinstance(target, np.random.RandomState):
            target.set_state(state)
        elif isinstance(target, random.Random):
            target.setstate(state)
        else:
            raise TypeError(f"restore_rng: cannot restore into a {type(target).__name__}")
        return target

    def make_rng(self, name):
        """A new ``np.random.Generator`` in the saved state ``name`` (a saved Generator/BitGenerator/state dict)."""
        state = self._rng_entry(name)["state"]
        kind = state.get("bit_generator") if isinstance(state, Mapping) else None
        if kind not in _BIT_GENERATORS:
            raise CheckpointError(
                f"{self.directory}: RNG state {name!r} is not a known NumPy bit generator state "
                f"(bit_generator={kind!r}; known: {sorted(_BIT_GENERATORS)})"
            )
        bit_generator = _BIT_GENERATORS[kind]()
        bit_generator.state = state
        return np.random.Generator(bit_generator)


def load_checkpoint(
    directory: str | os.PathLike, expected_config: Any = None, ignore_config_keys: Sequence[str] = NON_ARCHITECTURE_KEYS
) -> Checkpoint:
    """Read and verify a checkpoint directory written by :func:`save_checkpoint`; returns a :class:`Checkpoint`.

    Every file is checked (format, size and SHA-256 against the manifest) before use; problems raise
    :class:`CheckpointError` naming the file. ``expected_config`` (a dict or config object), when given, must match
    the saved config except for ``ignore_config_keys``. Nothing is unpickled or executed.
    """
    directory = Path(directory)
    manifest_path, manifest = _read_manifest(directory)
    where = str(manifest_path)
    files = manifest["files"]
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(f"{where}: the manifest lists no {MODEL_FILE}")
    config = _decoded(manifest["config"], where)
    if expected_config is not None:
        check_config(config, expected_config, ignore_config_keys, where=str(directory))
    model_state = _read_safetensors(directory / MODEL_FILE, files[MODEL_FILE], _tensor_order(manifest, MODEL_FILE))
    optimizer_state, arrays = None, None
    if manifest.get("optimizer") is not None:
        if OPTIMIZER_FILE not in files:
            raise CheckpointError(f"{where}: optimizer state present but {OPTIMIZER_FILE} is not listed")
        arrays = _read_safetensors(
            directory / OPTIMIZER_FILE, files[OPTIMIZER_FILE], _tensor_order(manifest, OPTIMIZER_FILE)
        )
        optimizer_state = _decoded(manifest["optimizer"], where, arrays)
    extra = {}
    for name in manifest.get("extra_files", []):
        path = directory / name
        if name not in files:
            raise CheckpointError(f"{where}: extra file {name!r} has no size/checksum record")
        if not path.is_file():
            raise CheckpointError(f"{path}: file is missing")
        record = _file_record(path)
        if record != files[name]:
            raise CheckpointError(
                f"{path}: size/checksum differ from the manifest ({record['bytes']} bytes vs "
                f"{files[name]['bytes']}): corrupted or replaced"
            )
        extra[name] = path
    rng_states = {}
    for name, entry in (manifest.get("rng_states") or {}).items():
        entry = _decoded(entry, where)
        if not isinstance(entry, dict) or entry.get("kind") not in _RNG_KINDS:
            raise CheckpointError(f"{where}: RNG state {name!r} is malformed")
        rng_states[name] = entry
    return Checkpoint(
        directory=directory,
        config=config,
        model_state=model_state,
        optimizer_state=optimizer_state,
        scheduler_state=_decoded(manifest.get("scheduler"), where),
        train_state=_decoded(manifest.get("train_state"), where, arrays),
        rng_states=rng_states,
        extra_files=extra,
        metadata=_decoded(manifest.get("metadata") or {}, where),
    )


def _load_weights(directory):
    manifest_path, manifest = _read_manifest(directory)
    files = manifest["files"]
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise CheckpointError(f"{manifest_path}: the manifest lists no {MODEL_FILE}")
    return _read_safetensors(Path(directory) / MODEL_FILE, files[MODEL_FILE], _tensor_order(manifest, MODEL_FILE))


def _tensor_order(manifest, file):
    order = (manifest.get("tensor_order") or {}).get(file)
    if order is not None and not (isinstance(order, list) and all(isinstance(n, str) for n in order)):
        raise CheckpointError(f"{MANIFEST}: malformed tensor_order for {file}")
    return order


def average_checkpoints(directories: Sequence[str | os.PathLike]) -> OrderedDict[str, np.ndarray]:
    """Element-wise mean of the model weights of several checkpoints (e.g. the last N), as a state dict.

    Float weights are averaged in float64 and cast back to their dtype; integer/bool arrays must be identical.
    Checkpoints with different keys, shapes or dtypes raise CheckpointError naming the checkpoint and the keys.
    """
    directories = [Path(d) for d in directories]
    if not directories:
        raise ValueError("average_checkpoints: no checkpoint directories given")
    first = _load_weights(directories[0])
    sums = OrderedDict((k, v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in first.items())
    for directory in directories[1:]:
        state = _load_weights(directory)
        missing, extra = [k for k in first if k not in state], [k for k in state if k not in first]
        if missing or extra:
            raise CheckpointError(
                f"average_checkpoints: {directory} has different weights than {directories[0]}: "
                f"missing {missing}, extra {extra}"
            )
        bad = [
            f"{k}: {v.shape} {v.dtype} vs {first[k].shape} {first[k].dtype}"
            for k, v in state.items()
            if v.shape != first[k].shape or v.dtype != first[k].dtype
        ]
        if bad:
            raise CheckpointError(
                f"average_checkpoints: {directory} differs from {directories[0]} in shape/dtype: " + "; ".join(bad)
            )
        for key, value in state.items():
            if value.dtype.kind == "f":
                sums[key] += value
            elif not np.array_equal(value, first[key]):
                raise CheckpointError(
                    f"average_checkpoints: non-float array {key!r} differs between {directory} "
                    f"and {directories[0]}; it cannot be averaged"
                )
    count = len(directories)
    return OrderedDict(
        (k, (v / count).astype(first[k].dtype) if first[k].dtype.kind == "f" else v.copy()) for k, v in sums.items()
    )


# ============================================================================================== manager
@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    metric: float | None
    mode: str | None = None  # "min" or "max": how the run that wrote it ranked ``metric`` (None: not recorded)


class CheckpointManager:
    """Numbered checkpoints ``root/step-000001234`` with pruning and best tracking.

    Keeps the ``keep_last`` most recent checkpoints plus the best one by ``metric`` (lower is better with
    ``mode="min"``, higher with ``"max"``; ties go to the earlier step). The listing is read from the checkpoints'
    own manifests (no separate index file that could disagree with the disk).
    """

    _PATTERN = re.compile(r"^step-(\d+)$")

    def __init__(self, root: str | os.PathLike, keep_last: int = 5, mode: str = "min"):
        if not isinstance(keep_last, int) or keep_last < 1:
            raise ValueError(f"CheckpointManager: keep_last must be an integer >= 1, got {keep_last!r}")
        if mode not in ("min", "max"):
            raise ValueError(f"CheckpointManager: mode must be 'min' or 'max', got {mode!r}")
        self.root, self.keep_last, self.mode = Path(root), keep_last, mode

    def path_for(self, step: int) -> Path:
        return self.root / f"step-{int(step):09d}"

    def save(self, step: int, model: Any, config_dict: Any, metric: float | None = None, **kwargs: Any) -> Path:
        """Save checkpoint ``step`` (kwargs as :func:`save_checkpoint`), then prune; returns its path."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"CheckpointManager.save: step must be a non-negative integer, got {step!r}")
        if metric is not None and not np.isfinite(float(metric)):
            raise ValueError(f"CheckpointManager.save: metric must be finite, got {metric!r}")
        # The ranking direction goes beside the metric: a reader of the run (--checkpoint RUN) cannot tell from the
        # model alone whether it is a BLEU/ROUGE (higher is better) or a perplexity (lower), e.g. a dialogue model.
        metadata = {"step": int(step), "metric": None if metric is None else float(metric), "mode": self.mode}
        path = save_checkpoint(self.path_for(step), model, config_dict, metadata=metadata, **kwargs)
        self.prune()
        return path

    def checkpoints(self) -> list[CheckpointInfo]:
        """Readable checkpoints under root, oldest step first (unreadable ones are skipped with a warning)."""
        infos: list[CheckpointInfo] = []
        if not self.root.is_dir():
            return infos
        for child in self.root.iterdir():
            match = self._PATTERN.match(child.name)
            if not match or not child.is_dir():
                continue
            try:
                _, manifest = _read_manifest(child)
                metadata = _decoded(manifest.get("metadata") or {}, str(child))
            except (CheckpointError, OSError) as exc:
                warnings.warn(f"CheckpointManager: skipping the unreadable checkpoint {child}: {exc}", stacklevel=2)
                continue
            mode = metadata.get("mode") if metadata.get("mode") in ("min", "max") else None
            infos.append(CheckpointInfo(int(match.group(1)), child, metadata.get("metric"), mode))
        return sorted(infos, key=lambda info: info.step)

    def last(self) -> Path | None:
        infos = self.checkpoints()
        return infos[-1].path if infos else None

    def best(self) -> Path | None:
        scored = [(info.metric, info) for info in self.checkpoints() if info.metric is not None]
        if not scored:
            return None
        sign = 1.0 if self.mode == "min" else -1.0
        return min(scored, key=lambda pair: (sign * pair[0], pair[1].step))[1].path

    def load_last(self, **kwargs: Any) -> Checkpoint:
        path = self.last()
        if path is None:
            raise FileNotFoundError(f"CheckpointManager: no checkpoint under {self.root}")
        return load_checkpoint(path, **kwargs)

    def load_best(self, **kwargs: Any) -> Checkpoint:
        path = self.best()
        if path is None:
            raise FileNotFoundError(f"CheckpointManager: no checkpoint with a metric under {self.root}")
        return load_checkpoint(path, **kwargs)

    def average_last(self, n: int) -> OrderedDict[str, np.ndarray]:
        """State dict averaging the weights of the last ``n`` checkpoints."""
        infos = self.checkpoints()
        if len(infos) < n:
            raise ValueError(f"CheckpointManager: {n} checkpoints requested, {len(infos)} under {self.root}")
        return average_checkpoints([info.path for info in infos[-n:]])

    def prune(self) -> None:
        """Delete checkpoints that are neither among the last ``keep_last`` nor the best."""
        infos = self.checkpoints()
        keep = {info.path for info in infos[-self.keep_last :]}
        best = self.best()
        if best is not None:
            keep.add(best)
        for info in infos:
            if info.path not in keep:
                shutil.rmtree(info.path)
