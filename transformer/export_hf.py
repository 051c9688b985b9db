"""Export a checkpoint to Hugging Face transformers, and import one back: the same weights, the same outputs.

Shape legend: C model width, F feed-forward width, V vocabulary, P positions.

    encoder-decoder (post-LN, sinusoidal)  <->  MarianMTModel   (config.json, model.safetensors, tokenizer files)
    language model  (pre-LN)               <->  GPT2LMHeadModel

Only numpy and safetensors are needed to write or read the files (transformers and torch load them); this module reads
checkpoints and imports no training code.

How the layouts differ, and why the mapping is exact:

* Linear weights: ours are (in, out) applied as ``x @ W``; torch's ``nn.Linear`` stores (out, in), so Marian gets
  ``W.T``. GPT-2's ``Conv1D`` stores (in, out) like ours. Our fused self-attention projection (C, 3C) is q | k | v
  side by side, the cross-attention's key/value projection (C, 2C) is k | v; each block splits the heads in order,
  as transformers does.
* Marian's sinusoidal table puts the sines in the first half of the channels and the cosines in the second
  (``[sin(p w_0), .., sin(p w_{C/2-1}), cos(p w_0), ..]``); ours interleaves them (``sin, cos, sin, cos``), with the
  same frequencies ``w_i = 10000^(-2i/C)``. Relabelling the model's channels by ``perm = [0, 2, 4, .., 1, 3, 5, ..]``
  (HF channel j is our channel perm[j]) turns one into the other, and it is the same function everywhere: every
  weight that reads the residual stream has its input rows permuted, every weight that writes it (attention output,
  second feed-forward, embeddings, layer norms' gain and bias) has its outputs permuted; layer norm's mean and
  variance do not depend on the channel order, the attention heads' inner channels are untouched, and the logits
  ``h . E_v`` are the same sum in another order. Marian rebuilds its table from the formula when it loads, so
  nothing else is stored.
* GPT-2 has only a learned position table: a learned table is written as it is, a sinusoidal one as its values
  (the function is the same; GPT-2 will train it if fine-tuned). GPT-2 always has biases: a model without them
  (``bias=false``) gets zeros.
* Our config is stored in config.json as ``npgrad_config``, so an import gets back the exact config (dtype, ids,
  dropout, ``bias``, sinusoidal positions) and identical weights.

Options that do not map are refused by name (relative/RoPE/ALiBi positions, pre-LN in Marian, post-LN in GPT-2,
learned positions in Marian, LoRA adapters not merged).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import checkpoint_kind, load_checkpoint, resolve_checkpoint, save_checkpoint
from .files import fsync_path, replace_directory, write_atomic
from .positional import sinusoidal_table

FORMATS = ("hf", "ctranslate2")
WEIGHTS = "model.safetensors"


class ExportError(ValueError):
    """A checkpoint (or an HF model) that cannot be carried over exactly; the message names the option."""


# ------------------------------------------------------------------------------------------------ checks
def check_mappable(config: dict, target: str) -> None:
    """Refuse, by name, an option that ``target`` ("marian", "gpt2", "ctranslate2", "ctranslate2-lm") cannot express."""
    kind = checkpoint_kind(config)
    positional = config["positional"]
    names = {
        "marian": "MarianMTModel",
        "gpt2": "GPT-2",
        "ctranslate2": "CTranslate2's Transformer",
        "ctranslate2-lm": "CTranslate2's decoder-only model",
    }
    name = names[target]
    if positional in ("relative", "rope", "alibi"):
        raise ExportError(
            f"positional={positional}: {name} has no {_POSITIONAL_NAMES[positional]} of this kind; only sinusoidal "
            "and learned absolute positions export exactly"
        )
    if target == "marian" and config["norm_first"]:
        raise ExportError(f"norm_first=true (pre-LN): {name} is post-LN only; export a post-LN model")
    if target == "marian" and positional == "learned":
        raise ExportError(f"positional=learned: {name}'s positions are a fixed sinusoidal table")
    if target == "gpt2" and not config["norm_first"]:
        raise ExportError(f"norm_first=false (post-LN): {name} is pre-LN only; export a pre-LN language model")
    if kind == "translation" and config["num_encoder_layers"] < 1:
        raise ExportError(f"num_encoder_layers={config['num_encoder_layers']}: {name} needs an encoder")


_POSITIONAL_NAMES = {
    "relative": "relative position tables (Shaw et al.)",
    "rope": "rotary position embedding",
    "alibi": "ALiBi attention bias",
}


def load_for_export(checkpoint: str | os.PathLike):
    """(config dict, state dict name -> ndarray, Checkpoint) of a plain checkpoint (or a run directory's best)."""
    source = load_checkpoint(resolve_checkpoint(checkpoint))
    state = dict(source.model_state)
    if any(name.endswith((".lora_A", ".lora_B")) for name in state) or (source.metadata or {}).get("lora_adapters"):
        raise ExportError(
            f"{source.directory} holds LoRA adapters; fold them in first: export --merge --checkpoint "
            f"{source.directory} --output MERGED, then export MERGED"
        )
    return dict(source.config), state, source


def marian_permutation(d_model: int) -> np.ndarray:
    """perm (C,): Marian's channel j is our channel perm[j] (our interleaved sin/cos -> Marian's sin half | cos half)."""
    return np.concatenate([np.arange(0, d_model, 2), np.arange(1, d_model, 2)])


# ------------------------------------------------------------------------------------------------ Marian
def _attention_to_hf(prefix, state, ours, perm, fused):
    """Our attention weights (x @ W layout) -> Marian's q/k/v/out projections (torch (out, in) layout)."""
    C = len(perm)
    if fused:
        w, b = state[f"{ours}.qkv.weight"], state[f"{ours}.qkv.bias"]  # (C, 3C), (3C,)
        blocks = {"q_proj": (w[:, :C], b[:C]), "k_proj": (w[:, C : 2 * C], b[C : 2 * C])}
        blocks["v_proj"] = (w[:, 2 * C :], b[2 * C :])
    else:
        kv, kv_b = state[f"{ours}.kv_proj.weight"], state[f"{ours}.kv_proj.bias"]  # (C, 2C), (2C,)
        blocks = {"q_proj": (state[f"{ours}.q_proj.weight"], state[f"{ours}.q_proj.bias"])}
        blocks["k_proj"], blocks["v_proj"] = (kv[:, :C], kv_b[:C]), (kv[:, C:], kv_b[C:])
    out = {}
    for name, (weight, bias) in blocks.items():  # inputs read the residual stream: permute the rows
        out[f"{prefix}.{name}.weight"] = weight[perm].T
        out[f"{prefix}.{name}.bias"] = bias
    out[f"{prefix}.out_proj.weight"] = state[f"{ours}.out_proj.weight"][:, perm].T  # writes it: permute outputs
    out[f"{prefix}.out_proj.bias"] = state[f"{ours}.out_proj.bias"][perm]
    return out


def _attention_from_hf(prefix, hf, ours, inv, fused):
    out = {}
    q, k, v = (hf[f"{prefix}.{n}.weight"].T[inv] for n in ("q_proj", "k_proj", "v_proj"))
    qb, kb, vb = (hf[f"{prefix}.{n}.bias"] for n in ("q_proj", "k_proj", "v_proj"))
    if fused:
        out[f"{ours}.qkv.weight"] = np.concatenate([q, k, v], axis=1)
        out[f"{ours}.qkv.bias"] = np.concatenate([qb, kb, vb])
    else:
        out[f"{ours}.q_proj.weight"], out[f"{ours}.q_proj.bias"] = q, qb
        out[f"{ours}.kv_proj.weight"] = np.concatenate([k, v], axis=1)
        out[f"{ours}.kv_proj.bias"] = np.concatenate([kb, vb])
    out[f"{ours}.out_proj.weight"] = hf[f"{prefix}.out_proj.weight"].T[:, inv]
    out[f"{ours}.out_proj.bias"] = hf[f"{prefix}.out_proj.bias"][inv]
    return out


# Our layer norm / feed-forward names -> Marian's, per layer kind.
_ENCODER_NORMS = {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"}
_DECODER_NORMS = {"norm1": "self_attn_layer_norm", "norm2": "encoder_attn_layer_norm", "norm3": "final_layer_norm"}


def to_marian(config: dict, state: dict) -> tuple[dict, dict]:
    """(config.json dict, tensors name -> ndarray in transformers' layout) of an encoder-decoder checkpoint."""
    check_mappable(config, "marian")
    C = config["d_model"]
    perm = marian_permutation(C)
    hf: dict[str, np.ndarray] = {}
    src_embed = state["src_embed.weight"][:, perm]  # (V, C)
    tgt_embed = src_embed if config["share_embeddings"] else state["tgt_embed.weight"][:, perm]
    if config["share_embeddings"]:
        hf["model.shared.weight"] = src_embed
    else:
        hf["model.encoder.embed_tokens.weight"] = src_embed
        hf["model.decoder.embed_tokens.weight"] = tgt_embed
    if not config["tie_output"]:
        hf["lm_head.weight"] = state["output_proj.weight"][perm].T  # (C, V) -> (V, C)
    hf["final_logits_bias"] = np.zeros((1, config["tgt_vocab_size"]), dtype=src_embed.dtype)
    for side, count, norms in (
        ("encoder", config["num_encoder_layers"], _ENCODER_NORMS),
        ("decoder", config["num_decoder_layers"], _DECODER_NORMS),
    ):
        for i in range(count):
            ours, theirs = f"{side}_layers.{i}", f"model.{side}.layers.{i}"
            hf.update(_attention_to_hf(f"{theirs}.self_attn", state, f"{ours}.self_attn", perm, fused=True))
            if side == "decoder":
                hf.update(_attention_to_hf(f"{theirs}.encoder_attn", state, f"{ours}.cross_attn", perm, fused=False))
            for our_norm, their_norm in norms.items():
                hf[f"{theirs}.{their_norm}.weight"] = state[f"{ours}.{our_norm}.weight"][perm]
                hf[f"{theirs}.{their_norm}.bias"] = state[f"{ours}.{our_norm}.bias"][perm]
            hf[f"{theirs}.fc1.weight"] = state[f"{ours}.feed_forward.linear1.weight"][perm].T  # (C, F) -> (F, C)
            hf[f"{theirs}.fc1.bias"] = state[f"{ours}.feed_forward.linear1.bias"]
            hf[f"{theirs}.fc2.weight"] = state[f"{ours}.feed_forward.linear2.weight"][:, perm].T  # (F, C) -> (C, F)
            hf[f"{theirs}.fc2.bias"] = state[f"{ours}.feed_forward.linear2.bias"][perm]
    hf = {name: np.ascontiguousarray(value) for name, value in hf.items()}
    hf_config = {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": config["src_vocab_size"],
        "decoder_vocab_size": config["tgt_vocab_size"],
        "d_model": C,
        "encoder_layers": config["num_encoder_layers"],
        "decoder_layers": config["num_decoder_layers"],
        "encoder_attention_heads": config["n_heads"],
        "decoder_attention_heads": config["n_heads"],
        "encoder_ffn_dim": config["d_ff"],
        "decoder_ffn_dim": config["d_ff"],
        "activation_function": config["activation"],  # "relu" / "gelu" (exact, erf) in transformers' ACT2FN
        "dropout": config["dropout"],
        "attention_dropout": config["attention_dropout"],
        "activation_dropout": config["dropout"],  # ours drops the feed-forward's hidden activation at the same rate
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "max_position_embeddings": config["max_len"],
        "scale_embedding": True,  # E[ids] * sqrt(C)
        "share_encoder_decoder_embeddings": bool(config["share_embeddings"]),
        "tie_word_embeddings": bool(config["tie_output"]),
        "pad_token_id": config["pad_id"],
        "eos_token_id": config["eos_id"],
        "decoder_start_token_id": config["bos_id"],  # our decoder starts from BOS (Marian's usual start is PAD)
        "bos_token_id": None,
        "forced_eos_token_id": None,
        "is_encoder_decoder": True,
        "use_cache": True,
        "init_std": 0.02,
        "dtype": config["dtype"],
        "npgrad_config": config,
    }
    return hf_config, hf


def from_marian(hf_config: dict, hf: dict, where: str = "the HF model") -> tuple[dict, dict]:
    """(our config dict, our state dict) of a MarianMTModel's config.json dict and tensors; refuses what does not map."""
    config = _config_from_marian(hf_config, hf, where)
    C = config["d_model"]
    inv = np.argsort(marian_permutation(C))
    state: dict[str, np.ndarray] = {}

    def embedding(side):
        for name in (f"model.{side}.embed_tokens.weight", "model.shared.weight"):
            if name in hf:
                return hf[name][:, inv]
        raise ExportError(
            f"{where}: no {side} token embedding (model.{side}.embed_tokens.weight or model.shared.weight)"
        )

    state["src_embed.weight"] = embedding("encoder")
    if not config["share_embeddings"]:
        state["tgt_embed.weight"] = embedding("decoder")
    for side, count, norms in (
        ("encoder", config["num_encoder_layers"], _ENCODER_NORMS),
        ("decoder", config["num_decoder_layers"], _DECODER_NORMS),
    ):
        for i in range(count):
            ours, theirs = f"{side}_layers.{i}", f"model.{side}.layers.{i}"
            state.update(_attention_from_hf(f"{theirs}.self_attn", hf, f"{ours}.self_attn", inv, fused=True))
            if side == "decoder":
                state.update(_attention_from_hf(f"{theirs}.encoder_attn", hf, f"{ours}.cross_attn", inv, fused=False))
            state[f"{ours}.feed_forward.linear1.weight"] = hf[f"{theirs}.fc1.weight"].T[inv]
            state[f"{ours}.feed_forward.linear1.bias"] = hf[f"{theirs}.fc1.bias"]
            state[f"{ours}.feed_forward.linear2.weight"] = hf[f"{theirs}.fc2.weight"].T[:, inv]
            state[f"{ours}.feed_forward.linear2.bias"] = hf[f"{theirs}.fc2.bias"][inv]
            for our_norm, their_norm in norms.items():
                state[f"{ours}.{our_norm}.weight"] = hf[f"{theirs}.{their_norm}.weight"][inv]
                state[f"{ours}.{our_norm}.bias"] = hf[f"{theirs}.{their_norm}.bias"][inv]
    if not config["tie_output"]:
        state["output_proj.weight"] = hf["lm_head.weight"].T[inv]
    dtype = np.dtype(config["dtype"])
    return config, {name: np.ascontiguousarray(value, dtype=dtype) for name, value in state.items()}


def _config_from_marian(hf_config, hf, where):
    get = hf_config.get
    if get("model_type") != "marian":
        raise ExportError(f"{where}: model_type={get('model_type')!r}; import --format hf reads marian and gpt2 models")
    if get("encoder_attention_heads") != get("decoder_attention_heads") or get("encoder_ffn_dim") != get(
        "decoder_ffn_dim"
    ):
        raise ExportError(
            f"{where}: encoder and decoder differ in heads ({get('encoder_attention_heads')} vs "
            f"{get('decoder_attention_heads')}) or feed-forward width ({get('encoder_ffn_dim')} vs "
            f"{get('decoder_ffn_dim')}); npgrad's Transformer uses one of each"
        )
    if get("activation_function") not in ("relu", "gelu"):
        raise ExportError(f"{where}: activation_function={get('activation_function')!r}; npgrad has relu and gelu")
    if not get("scale_embedding", False):
        raise ExportError(
            f"{where}: scale_embedding=false; npgrad's encoder-decoder scales embeddings by sqrt(d_model)"
        )
    bias = hf.get("final_logits_bias")
    if bias is not None and np.any(bias != 0):
        raise ExportError(f"{where}: final_logits_bias is not zero; npgrad's output projection has no bias")
    start, pad = get("decoder_start_token_id"), get("pad_token_id")
    if start == pad:
        raise ExportError(
            f"{where}: decoder_start_token_id={start} is the padding id; npgrad's decoder masks padding, so it "
            "needs a start token of its own (bos)"
        )
    src_vocab = get("vocab_size")
    tgt_vocab = get("decoder_vocab_size") or src_vocab
    share = bool(get("share_encoder_decoder_embeddings", True))
    derived = {
        "src_vocab_size": src_vocab,
        "tgt_vocab_size": src_vocab if share else tgt_vocab,
        "d_model": get("d_model"),
        "n_heads": get("encoder_attention_heads"),
        "num_encoder_layers": get("encoder_layers"),
        "num_decoder_layers": get("decoder_layers"),
        "d_ff": get("encoder_ffn_dim"),
        "activation": get("activation_function"),
        "norm_first": False,
        "positional": "sinusoidal",
        "max_len": get("max_position_embeddings"),
        "share_embeddings": share,
        "tie_output": bool(get("tie_word_embeddings", True)),
        "pad_id": pad,
        "eos_id": get("eos_token_id"),
        "bos_id": start,
    }
    saved = get("npgrad_config")
    if isinstance(saved, dict):
        changed = {k: (saved.get(k), v) for k, v in derived.items() if saved.get(k) != v}
        if changed:
            raise ExportError(f"{where}: config.json's npgrad_config disagrees with its Marian fields: {changed}")
        return dict(saved)
    # A Marian model from elsewhere: the fields npgrad has and Marian lacks take the defaults.
    unk = 1 if 1 not in (pad, start, derived["eos_id"]) else 0
    return {
        **derived,
        "dropout": get("dropout", 0.1),
        "attention_dropout": get("attention_dropout", 0.0),
        "max_relative_distance": 16,
        "unk_id": unk,
        "dtype": "float32",
        "seed": 0,
    }


# ------------------------------------------------------------------------------------------------ GPT-2
def to_gpt2(config: dict, state: dict) -> tuple[dict, dict]:
    """(config.json dict, tensors in transformers' layout) of a language-model checkpoint, as GPT2LMHeadModel."""
    check_mappable(config, "gpt2")
    C = config["d_model"]
    dtype = state["token_embed.weight"].dtype
    hf: dict[str, np.ndarray] = {"transformer.wte.weight": state["token_embed.weight"]}
    if config["positional"] == "learned":
        hf["transformer.wpe.weight"] = state["positions.embedding.weight"]
    else:  # the sinusoids as a table: the same function
        hf["transformer.wpe.weight"] = sinusoidal_table(config["block_size"], C, dtype)

    def bias_of(name, size):
        return state.get(name, np.zeros(size, dtype=dtype))  # bias=false: zeros are the same function

    names = {"ln_1": "norm1", "ln_2": "norm3"}
    for i in range(config["n_layers"]):
        ours, theirs = f"layers.{i}", f"transformer.h.{i}"
        for their, our in names.items():
            hf[f"{theirs}.{their}.weight"] = state[f"{ours}.{our}.weight"]
            hf[f"{theirs}.{their}.bias"] = bias_of(f"{ours}.{our}.bias", C)
        pairs = {
            "attn.c_attn": ("self_attn.qkv", 3 * C),
            "attn.c_proj": ("self_attn.out_proj", C),
            "mlp.c_fc": ("feed_forward.linear1", config["d_ff"]),
            "mlp.c_proj": ("feed_forward.linear2", C),
        }
        for their, (our, size) in pairs.items():  # Conv1D stores (in, out), as we do
            hf[f"{theirs}.{their}.weight"] = state[f"{ours}.{our}.weight"]
            hf[f"{theirs}.{their}.bias"] = bias_of(f"{ours}.{our}.bias", size)
    hf["transformer.ln_f.weight"] = state["final_norm.weight"]
    hf["transformer.ln_f.bias"] = bias_of("final_norm.bias", C)
    if not config["tie_output"]:
        hf["lm_head.weight"] = state["output_proj.weight"].T
    hf = {name: np.ascontiguousarray(value) for name, value in hf.items()}
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config["vocab_size"],
        "n_positions": config["block_size"],
        "n_embd": C,
        "n_layer": config["n_layers"],
        "n_head": config["n_heads"],
        "n_inner": config["d_ff"],
        "activation_function": config["activation"],
        "resid_pdrop": config["dropout"],
        "embd_pdrop": config["dropout"],
        "attn_pdrop": config["attention_dropout"],
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": bool(config["tie_output"]),
        "bos_token_id": None,
        "eos_token_id": None,
        "use_cache": True,
        "dtype": config["dtype"],
        "npgrad_config": config,
    }
    return hf_config, hf


def from_gpt2(hf_config: dict, hf: dict, where: str = "the HF model") -> tuple[dict, dict]:
    """(our config dict, our state dict) of a GPT2LMHeadModel's config.json dict and tensors."""
    get = hf_config.get
    if get("activation_function") not in ("relu", "gelu"):
        raise ExportError(
            f"{where}: activation_function={get('activation_function')!r}; npgrad's language model has relu and "
            "exact gelu (GPT-2's own gelu_new is the tanh approximation)"
        )
    if get("scale_attn_by_inverse_layer_idx") or get("reorder_and_upcast_attn"):
        raise ExportError(f"{where}: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn have no npgrad twin")
    derived = {
        "vocab_size": get("vocab_size"),
        "d_model": get("n_embd"),
        "n_heads": get("n_head"),
        "n_layers": get("n_layer"),
        "d_ff": get("n_inner") or 4 * int(get("n_embd") or 0),
        "block_size": get("n_positions"),
        "activation": get("activation_function"),
        "norm_first": True,
        "tie_output": bool(get("tie_word_embeddings", True)),
    }
    saved = get("npgrad_config")
    if isinstance(saved, dict):
        changed = {k: (saved.get(k), v) for k, v in derived.items() if saved.get(k) != v}
        if changed:
            raise ExportError(f"{where}: config.json's npgrad_config disagrees with its GPT-2 fields: {changed}")
        config = dict(saved)
    else:
        config = {
            **derived,
            "dropout": get("resid_pdrop", 0.0),
            "attention_dropout": get("attn_pdrop", 0.0),
            "positional": "learned",
            "bias": True,
            "dtype": "float32",
            "seed": 0,
            "max_relative_distance": 16,
        }
    state: dict[str, np.ndarray] = {"token_embed.weight": hf["transformer.wte.weight"]}
    if config["positional"] == "learned":
        state["positions.embedding.weight"] = hf["transformer.wpe.weight"]
    names = {"ln_1": "norm1", "ln_2": "norm3", "attn.c_attn": "self_attn.qkv", "attn.c_proj": "self_attn.out_proj"}
    names.update({"mlp.c_fc": "feed_forward.linear1", "mlp.c_proj": "feed_forward.linear2"})
    for i in range(config["n_layers"]):
        for their, our in names.items():
            state[f"layers.{i}.{our}.weight"] = hf[f"transformer.h.{i}.{their}.weight"]
            if config["bias"]:
                state[f"layers.{i}.{our}.bias"] = hf[f"transformer.h.{i}.{their}.bias"]
    state["final_norm.weight"] = hf["transformer.ln_f.weight"]
    if config["bias"]:
        state["final_norm.bias"] = hf["transformer.ln_f.bias"]
    if not config["tie_output"]:
        state["output_proj.weight"] = hf["lm_head.weight"].T
    dtype = np.dtype(config["dtype"])
    return config, {name: np.ascontiguousarray(value, dtype=dtype) for name, value in state.items()}


# ------------------------------------------------------------------------------------------------ tokenizer files
def sentencepiece_pieces(model_file: str | os.PathLike) -> list[str]:
    """The pieces of a SentencePiece model in id order (the vocabulary both exports name tokens by)."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor()
    processor.Load(str(model_file))
    return [processor.IdToPiece(i) for i in range(processor.GetPieceSize())]


def tokenizer_models(source) -> tuple[Path, Path] | None:
    """(source .model, target .model) of a checkpoint's SentencePiece tokenizer, or None (a character tokenizer)."""
    meta_path = source.extra_files.get("tokenizer.json")
    if meta_path is None:
        return None
    meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
    if meta.get("kind") != "sentencepiece":
        return None
    directory = Path(meta_path).parent
    src = directory / meta["src"]["model_file"]
    tgt = src if meta.get("joint") else directory / meta["tgt"]["model_file"]
    return src, tgt


def _marian_tokenizer_files(source, config, staging: Path) -> list[str]:
    models = tokenizer_models(source)
    if models is None:
        return []
    src, tgt = models
    shutil.copyfile(src, staging / "source.spm")
    shutil.copyfile(tgt, staging / "target.spm")
    joint = src == tgt
    # Marian maps pieces to ids through vocab.json; ours are SentencePiece's own ids, so the map is the identity.
    _write_json(staging / "vocab.json", {piece: i for i, piece in enumerate(sentencepiece_pieces(src))})
    written = ["source.spm", "target.spm", "vocab.json"]
    if not joint:
        _write_json(staging / "target_vocab.json", {piece: i for i, piece in enumerate(sentencepiece_pieces(tgt))})
        written.append("target_vocab.json")
    pieces = sentencepiece_pieces(tgt)
    _write_json(
        staging / "tokenizer_config.json",
        {
            "tokenizer_class": "MarianTokenizer",
            "separate_vocabs": not joint,
            "unk_token": pieces[config["unk_id"]],
            "eos_token": pieces[config["eos_id"]],
            "pad_token": pieces[config["pad_id"]],
            "model_max_length": config["max_len"] - 1,
        },
    )
    return written + ["tokenizer_config.json"]


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# ------------------------------------------------------------------------------------------------ commands
def check_output(output: str | os.PathLike, overwrite: bool = False) -> None:
    """An export's --output: a new directory, or (with ``overwrite``) an earlier export; never a checkpoint or a place
    inside a run's checkpoints. Checked before any work."""
    from .checkpoint import MANIFEST, checkpoint_area

    target = Path(output)
    inside = checkpoint_area(target.parent)
    if inside is not None:
        raise ExportError(f"--output {target} is inside {inside}, which the run manages; write it elsewhere")
    if not target.exists():
        return
    earlier = target.is_dir() and (target / "config.json").is_file() and not (target / MANIFEST).is_file()
    if not earlier:
        raise ExportError(f"--output {target} exists and is not an earlier export; refusing to replace it")
    if not overwrite:
        raise ExportError(f"--output {target} holds an earlier export; pass --overwrite to replace it")


def write_directory(output: str | os.PathLike, fill, overwrite: bool = False) -> Path:
    """Build the output directory in a temporary sibling with ``fill(staging)``, then rename it into place: a failed
    export leaves nothing half-written, and an earlier export (``overwrite``) is removed only once the new one is in
    place."""
    check_output(output, overwrite)
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        fill(staging)
        fsync_path(staging, directory=True)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def export_hf(checkpoint: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> tuple[Path, str]:
    """Write a transformers model directory (config.json, generation_config.json, model.safetensors, tokenizer files);
    returns (directory, architecture name)."""
    from safetensors.numpy import save_file

    check_output(output, overwrite)
    config, state, source = load_for_export(checkpoint)
    lm = checkpoint_kind(config) == "lm"
    hf_config, tensors = to_gpt2(config, state) if lm else to_marian(config, state)

    def fill(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS), metadata={"format": "pt"})
        _write_json(staging / "config.json", hf_config)
        if not lm:
            generation = {
                "decoder_start_token_id": config["bos_id"],
                "eos_token_id": config["eos_id"],
                "pad_token_id": config["pad_id"],
                "forced_eos_token_id": None,
                "bad_words_ids": [[config["pad_id"]], [config["bos_id"]]],  # never generated, as in our search
                "max_length": config["max_len"],
                "num_beams": 1,
            }
            _write_json(staging / "generation_config.json", generation)
            _marian_tokenizer_files(source, config, staging)
        npgrad_tokenizer = staging / "npgrad_tokenizer"  # ours as it is (char LMs have no HF twin)
        npgrad_tokenizer.mkdir()
        for name, path in source.extra_files.items():
            shutil.copyfile(path, npgrad_tokenizer / name)

    return write_directory(output, fill, overwrite), hf_config["architectures"][0]


def import_hf(model_dir: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False) -> tuple[Path, str]:
    """An npgrad checkpoint of a MarianMTModel or GPT2LMHeadModel directory (safetensors weights);
    returns (checkpoint directory, model_type)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(model_dir)
    config_path, weights_path = directory / "config.json", directory / WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ExportError(f"{path} does not exist (import --format hf reads config.json and {WEIGHTS})")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{config_path} is not valid JSON: {error}") from None
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, TypeError, ValueError) as error:
        raise ExportError(
            f"{weights_path}: cannot read it as float32/float64 safetensors ({error}); save the model in float32"
        ) from None
    model_type = hf_config.get("model_type")
    where = str(directory)
    try:
        if model_type == "marian":
            config, state = from_marian(hf_config, tensors, where)
        elif model_type == "gpt2":
            config, state = from_gpt2(hf_config, tensors, where)
        else:
            raise ExportError(f"{config_path}: model_type={model_type!r}; import --format hf reads marian and gpt2")
    except KeyError as error:
        raise ExportError(f"{weights_path}: tensor {error} is missing") from None
    state = _check_model(config, state, where)
    with tempfile.TemporaryDirectory() as scratch:
        # Our own tokenizer files when the directory came from export; else those a Marian directory's files give.
        extra: dict[str, str | os.PathLike] = {
            p.name: p for p in sorted((directory / "npgrad_tokenizer").glob("*")) if p.is_file()
        }
        if not extra and model_type == "marian":
            extra = _imported_tokenizer(directory, config, Path(scratch))
        if output is not None and Path(output).exists() and not overwrite:
            raise ExportError(f"--output {output} exists; pass --overwrite to replace an earlier import")
        saved = save_checkpoint(
            output, state, config, extra_files=extra, metadata={"imported_from": str(directory.resolve())}
        )
    return saved, model_type


def _check_model(config: dict, state: dict, where: str) -> dict:
    """Build the model once: every tensor present, every shape right, or a one-line error; returns the state in the
    model's own order (the order a checkpoint written here has)."""
    from .model import LanguageModel, LMConfig, Transformer, TransformerConfig

    model: LanguageModel | Transformer
    try:
        if checkpoint_kind(config) == "lm":
            model = LanguageModel(LMConfig.from_dict(config, strict=True, where=where))
        else:
            model = Transformer(TransformerConfig.from_dict(config, strict=True, where=where))
        model.load_state_dict(state)
    except (KeyError, ValueError) as error:
        raise ExportError(f"{where}: the weights do not fit the model: {error}") from None
    return {name: state[name] for name in model.state_dict()}


def _imported_tokenizer(directory: Path, config: dict, scratch: Path) -> dict[str, str | os.PathLike]:
    """Our tokenizer files for a Marian directory whose vocab.json is its SentencePiece model's own id order (what
    export writes); {} when the directory has none. Marian models whose vocab.json reorders the pieces are refused."""
    source_spm, target_spm, vocab_json = (directory / n for n in ("source.spm", "target.spm", "vocab.json"))
    if not source_spm.is_file():
        return {}
    joint = target_spm.read_bytes() == source_spm.read_bytes()
    vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
    pieces = sentencepiece_pieces(source_spm)
    if vocab != {piece: i for i, piece in enumerate(pieces)}:
        raise ExportError(
            f"{vocab_json}: its ids are not {source_spm.name}'s own piece ids; npgrad's tokenizer uses SentencePiece "
            "ids directly, so this model's vocabulary cannot be carried over"
        )
    if not joint:
        raise ExportError(f"{directory}: separate source/target SentencePiece models are not imported yet")
    specials = {"pad_id": config["pad_id"], "unk_id": config["unk_id"], "bos_id": config["bos_id"]}
    specials["eos_id"] = config["eos_id"]
    from .tokenizer import SPECIAL_IDS

    if specials != SPECIAL_IDS:
        raise ExportError(f"{directory}: special ids {specials}; npgrad's SentencePiece tokenizer needs {SPECIAL_IDS}")
    shutil.copyfile(source_spm, scratch / "spm.model")
    entry = {"kind": "sentencepiece", "model_file": "spm.model", "vocab_size": len(pieces), **SPECIAL_IDS}
    _write_json(scratch / "tokenizer.json", {"kind": "sentencepiece", "joint": True, "src": entry, "tgt": entry})
    return {"spm.model": scratch / "spm.model", "tokenizer.json": scratch / "tokenizer.json"}
