"""Export a checkpoint to CTranslate2 with its Python spec API: the same weights, the same greedy outputs.

Shape legend: C model width, F feed-forward width, V vocabulary, P positions.

    encoder-decoder  -> ctranslate2.specs.TransformerSpec            (a ctranslate2.Translator directory)
    language model   -> ctranslate2.specs.TransformerDecoderModelSpec (a ctranslate2.Generator directory)

CTranslate2 stores torch's (out, in) layout, so every weight is our (in, out) transposed; the fused self-attention
projection (3C, C) and the cross-attention's key/value projection (2C, C) are ours transposed as they are (q | k | v
blocks, heads in order). Positions are given as a table, ours (sinusoidal, interleaved sin/cos, or learned), so no
channel permutation is needed. Both post-LN and pre-LN (with its final layer norms) map; layer norm epsilon is ours
(1e-5). The vocabulary is the SentencePiece pieces in id order (characters for a character LM); the source gets
``</s>`` appended by CTranslate2 (``add_source_eos``), as our batching appends EOS; decoding starts from ``<s>``.
``--quantization int8`` (or any CTranslate2 quantization) is passed to ``spec.optimize``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from .checkpoint import checkpoint_kind
from .export_hf import (
    ExportError,
    check_mappable,
    check_output,
    load_for_export,
    sentencepiece_pieces,
    tokenizer_models,
    write_directory,
)
from .extras import require
from .positional import sinusoidal_table

QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "bfloat16", "float32")
POSITION_ROWS = 1024  # sinusoids are a formula: give CTranslate2 more rows than the model's max_len


def _linear(spec, state, name, transpose=True):
    weight = state[f"{name}.weight"]
    spec.weight = np.ascontiguousarray(weight.T if transpose else weight, dtype=np.float32)
    if f"{name}.bias" in state:
        spec.bias = np.ascontiguousarray(state[f"{name}.bias"], dtype=np.float32)


def _layer_norm(spec, state, name):
    weight = state[f"{name}.weight"]
    spec.gamma = np.ascontiguousarray(weight, dtype=np.float32)
    spec.beta = np.ascontiguousarray(state.get(f"{name}.bias", np.zeros_like(weight)), dtype=np.float32)


def _positions(config, state, prefix, rows):
    if config["positional"] == "learned":
        return np.ascontiguousarray(state[f"{prefix}.embedding.weight"], dtype=np.float32)
    return sinusoidal_table(max(rows, POSITION_ROWS), config["d_model"], np.float32)


def _layer(layer, state, ours, cross, ffn_norm):
    """One encoder/decoder layer's spec from ours: self-attention, [cross-attention], feed-forward, their norms."""
    _linear(layer.self_attention.linear[0], state, f"{ours}.self_attn.qkv")
    _linear(layer.self_attention.linear[1], state, f"{ours}.self_attn.out_proj")
    _layer_norm(layer.self_attention.layer_norm, state, f"{ours}.norm1")
    if cross:
        _linear(layer.attention.linear[0], state, f"{ours}.cross_attn.q_proj")
        _linear(layer.attention.linear[1], state, f"{ours}.cross_attn.kv_proj")
        _linear(layer.attention.linear[2], state, f"{ours}.cross_attn.out_proj")
        _layer_norm(layer.attention.layer_norm, state, f"{ours}.norm2")
    _linear(layer.ffn.linear_0, state, f"{ours}.feed_forward.linear1")
    _linear(layer.ffn.linear_1, state, f"{ours}.feed_forward.linear2")
    _layer_norm(layer.ffn.layer_norm, state, f"{ours}.{ffn_norm}")


def _decoder_output(decoder, state, config, final_norm):
    """The pre-LN model's final layer norm, and the output projection (tied: the embedding itself)."""
    if config["norm_first"]:
        _layer_norm(decoder.layer_norm, state, final_norm)
    if config["tie_output"]:
        decoder.projection.weight = decoder.embeddings.weight
    else:
        _linear(decoder.projection, state, "output_proj")


def _activation(common_spec, config):
    return {"relu": common_spec.Activation.RELU, "gelu": common_spec.Activation.GELU}[config["activation"]]


def translation_spec(config: dict, state: dict):
    """A ctranslate2 TransformerSpec holding an encoder-decoder checkpoint's weights (vocabulary not yet set)."""
    require("ctranslate2", "export", "export --format ctranslate2")
    from ctranslate2.specs import common_spec, transformer_spec

    check_mappable(config, "ctranslate2")
    spec = transformer_spec.TransformerSpec.from_config(
        (config["num_encoder_layers"], config["num_decoder_layers"]),
        config["n_heads"],
        pre_norm=bool(config["norm_first"]),
        activation=_activation(common_spec, config),
    )
    spec.config.layer_norm_epsilon = 1e-5
    encoder, decoder = spec.encoder, spec.decoder
    tgt_embed = "src_embed" if config["share_embeddings"] else "tgt_embed"
    encoder.embeddings[0].weight = np.ascontiguousarray(state["src_embed.weight"], dtype=np.float32)
    decoder.embeddings.weight = np.ascontiguousarray(state[f"{tgt_embed}.weight"], dtype=np.float32)
    encoder.scale_embeddings = decoder.scale_embeddings = math.sqrt(config["d_model"])
    encoder.position_encodings.encodings = _positions(config, state, "src_positions", config["max_len"])
    decoder.position_encodings.encodings = _positions(config, state, "tgt_positions", config["max_len"])
    for i, layer in enumerate(encoder.layer):
        _layer(layer, state, f"encoder_layers.{i}", cross=False, ffn_norm="norm2")
    for i, layer in enumerate(decoder.layer):
        _layer(layer, state, f"decoder_layers.{i}", cross=True, ffn_norm="norm3")
    if config["norm_first"]:
        _layer_norm(encoder.layer_norm, state, "encoder_norm")
    _decoder_output(decoder, state, config, "decoder_norm")
    return spec


def language_model_spec(config: dict, state: dict):
    """A ctranslate2 TransformerDecoderModelSpec holding a language model's weights (vocabulary not yet set)."""
    require("ctranslate2", "export", "export --format ctranslate2")
    from ctranslate2.specs import common_spec, transformer_spec

    check_mappable(config, "ctranslate2-lm")
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        config["n_layers"],
        config["n_heads"],
        pre_norm=bool(config["norm_first"]),
        activation=_activation(common_spec, config),
        no_final_norm=not config["norm_first"],
    )
    spec.config.layer_norm_epsilon = 1e-5
    decoder = spec.decoder
    decoder.embeddings.weight = np.ascontiguousarray(state["token_embed.weight"], dtype=np.float32)
    decoder.scale_embeddings = False  # GPT convention: no sqrt(C)
    decoder.position_encodings.encodings = _positions(config, state, "positions", config["block_size"])
    for i, layer in enumerate(decoder.layer):
        _layer(layer, state, f"layers.{i}", cross=False, ffn_norm="norm3")
    _decoder_output(decoder, state, config, "final_norm")
    return spec


def export_ct2(
    checkpoint: str | os.PathLike, output: str | os.PathLike, quantization: str | None = None, overwrite: bool = False
) -> Path:
    """Write a CTranslate2 model directory (model.bin, vocabularies, config.json) plus the SentencePiece model(s)."""
    check_output(output, overwrite)
    config, state, source = load_for_export(checkpoint)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ExportError(f"--quantization {quantization}: choose one of {', '.join(QUANTIZATIONS)}")
    models = tokenizer_models(source)
    if checkpoint_kind(config) == "lm":
        spec = language_model_spec(config, state)
        if models is not None:
            tokens = sentencepiece_pieces(models[0])
        else:
            meta = json.loads(Path(source.extra_files["tokenizer.json"]).read_text(encoding="utf-8"))
            tokens = list(meta["src"]["chars"])
        spec.register_vocabulary(tokens)
    else:
        if models is None:
            raise ExportError(f"{source.directory}: no SentencePiece tokenizer in the checkpoint")
        spec = translation_spec(config, state)
        src_tokens, tgt_tokens = sentencepiece_pieces(models[0]), sentencepiece_pieces(models[1])
        spec.register_source_vocabulary(src_tokens)
        spec.register_target_vocabulary(tgt_tokens)
        spec.config.unk_token = tgt_tokens[config["unk_id"]]
        spec.config.bos_token = tgt_tokens[config["bos_id"]]
        spec.config.eos_token = tgt_tokens[config["eos_id"]]
        spec.config.decoder_start_token = tgt_tokens[config["bos_id"]]
        spec.config.add_source_eos = True  # our sources end with EOS
    spec.validate()
    spec.optimize(quantization=quantization)

    def fill(staging: Path) -> None:
        spec.save(str(staging))
        if models is not None:
            for name, path in (("source.spm", models[0]), ("target.spm", models[1])):
                (staging / name).write_bytes(Path(path).read_bytes())

    return write_directory(output, fill, overwrite)
