"""Attention maps: the attention weights of a translation (``translate --attention DIR``) or of a generated text
(``lm-sample --attention DIR``), as arrays (``.npz``) and heatmaps (``.png``), one pair of files per input line.

Shape legend: L layers, H heads, S source tokens, T target tokens.

How the weights are obtained: the search (greedy, beam or sampling) runs as always, on the fused attention path;
then the returned hypothesis is fed once more, teacher-forced, through ``model.forward(..., need_weights=True)``.
That pass sees exactly the prefixes the search saw for that hypothesis (the cached decoding path and the full
forward give the same weights: tests/test_attention_weights.py checks both that and, for beam search, equality with
the weights the search itself computed), so the maps are those of the returned translation, with no bookkeeping
through the beam's reordering and no cost to decoding when maps are not asked for.

Files, NNNN = the input line number from 0000:

* translation: ``cross`` (L, H, T, S), ``encoder_self`` (L, H, S, S), ``decoder_self`` (L, H, T, T);
  ``source_pieces`` (S,) the sub-word pieces fed to the encoder (with the final ``</s>``), ``target_pieces`` (T,)
  the pieces generated (row t of ``cross`` and ``decoder_self`` is the step that produced target piece t; with
  ``</s>`` when the hypothesis ended), ``target_input_pieces`` (T,) the decoder's inputs at those steps
  (``<s>`` then the target shifted; the keys of ``decoder_self``), and the matching ``*_ids``; the picture is the
  cross-attention, one heatmap per layer and head plus the head average of each layer.
* language model: ``decoder_self`` (L, H, T, T) over the prompt and the generated text, ``pieces`` (T,), ``ids``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import npgrad as ng

from .data import TranslationDataset
from .files import write_atomic
from .search import _eval_mode

# Beyond this many tokens on an axis only every k-th piece is named, so the labels stay legible.
MAX_LABELS = 48


def pieces(tokenizer, ids: Sequence[int]) -> list[str]:
    """The readable piece of every id (SentencePiece's pieces; a character tokenizer's characters, with the
    invisible ones spelled: a space as '␣', a newline as '\\n')."""
    processor = getattr(tokenizer, "processor", None)
    if processor is not None:
        return [processor.id_to_piece(int(i)) for i in ids]
    visible = {" ": "␣", "\n": "\\n", "\t": "\\t"}
    return [visible.get(tokenizer.chars[int(i)], tokenizer.chars[int(i)]) for i in ids]


def _weights_of_one_row(model, *inputs) -> dict:
    """model.forward(*inputs) of a one-row batch, in eval mode, without gradients -> {kind: (L, H, Q, K)}."""
    with ng.no_grad(), _eval_mode(model):
        _, weights = model.forward(*inputs, need_weights=True)
    return {kind: w[:, 0] for kind, w in weights.items()}


def translation_attention(model, src_ids: Sequence[int], generated: Sequence[int], ended: bool) -> dict:
    """The attention weights of one translation, by one teacher-forced pass of the generated tokens.

    ``src_ids``: the source ids as the search got them (without the ``</s>`` the batch appends); ``generated``: the
    tokens the search returned (no BOS/EOS); ``ended``: whether it stopped at an EOS (then that step is a row too).
    Returns the module docstring's arrays (ids and weights; no pieces).
    """
    batch = TranslationDataset([list(src_ids)], [list(generated)]).collate([0])
    rows = len(generated) + int(ended)  # the steps the search took for this hypothesis
    return {
        **_weights_of_one_row(model, batch.src, batch.tgt_in[:, :rows]),
        "source_ids": batch.src[0],
        "target_ids": batch.tgt_out[0, :rows],
        "target_input_ids": batch.tgt_in[0, :rows],
    }


def lm_attention(model, ids: Sequence[int]) -> dict:
    """The self-attention weights of a language model over ``ids`` (one window): {"decoder_self", "ids"}."""
    batch = np.asarray(ids, dtype=np.int64)[None, :]  # (1, T)
    return {**_weights_of_one_row(model, batch), "ids": batch[0]}


def _save_npz(path: Path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def _labels(set_ticks, labels, rotation):
    step = max(1, -(-len(labels) // MAX_LABELS))
    positions = np.arange(0, len(labels), step)
    set_ticks(positions, [labels[i] for i in positions], rotation=rotation, fontsize=7)


def heatmap_grid(weights: np.ndarray, query_labels: list[str], key_labels: list[str], title: str, path) -> Path:
    """A PNG of attention weights (L, H, Q, K): one row per layer, one heatmap per head and the head average last;
    queries down (named in the first column), keys across (named under the last row), each cell the probability on
    one scale for all, 0 white to 1 black."""
    from .extras import pyplot

    plt = pyplot()
    n_layers, n_heads, n_queries, n_keys = weights.shape
    columns = n_heads + 1
    # Inches: a cell per token (smaller when long), fixed margins for the piece labels (no layout solver: fast).
    cell = 0.15 if max(n_queries, n_keys) <= MAX_LABELS else 6.0 / max(n_queries, n_keys)
    panel_w, panel_h = max(1.2, cell * n_keys), max(1.0, cell * n_queries)
    left, bottom, top, gap_w, gap_h = 1.0, 1.0, 0.6, 0.12, 0.3
    width = left + columns * panel_w + (columns - 1) * gap_w + 0.15
    height = bottom + n_layers * panel_h + (n_layers - 1) * gap_h + top
    figure, axes = plt.subplots(
        n_layers,
        columns,
        figsize=(width, height),
        squeeze=False,
        gridspec_kw=dict(
            left=left / width,
            right=1 - 0.15 / width,
            bottom=bottom / height,
            top=1 - top / height,
            wspace=gap_w / panel_w,
            hspace=gap_h / panel_h,
        ),
    )
    for layer in range(n_layers):
        for column in range(columns):
            ax = axes[layer, column]
            data = weights[layer, column] if column < n_heads else weights[layer].mean(axis=0)
            ax.imshow(data, cmap="Greys", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
            name = f"head {column + 1}" if column < n_heads else "mean of heads"
            ax.set_title(f"layer {layer + 1}, {name}", fontsize=7, pad=2)
            if layer == n_layers - 1:
                _labels(ax.set_xticks, key_labels, 90)
            else:
                ax.set_xticks([])
            if column == 0:
                _labels(ax.set_yticks, query_labels, 0)
            else:
                ax.set_yticks([])
    figure.suptitle(title + "\n(weight 0 white .. 1 black)", fontsize=8)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return write_atomic(path, buffer.getvalue())


def write_translation_maps(directory, model, src_tok, tgt_tok, lines: Sequence[str], tokens: Sequence) -> int:
    """DIR/NNNN.npz and DIR/NNNN.png for every translated line (``tokens`` as filled by translate_sentences); an
    empty input line gets no files. Returns the number of lines drawn."""
    directory = Path(directory)
    drawn = 0
    for number, (line, record) in enumerate(zip(lines, tokens)):
        if record is None:
            continue
        src_ids, generated, ended = record
        maps = translation_attention(model, src_ids, generated, ended)
        source = pieces(src_tok, maps["source_ids"])
        target = pieces(tgt_tok, maps["target_ids"])
        arrays = {
            **maps,
            "source_pieces": np.array(source),
            "target_pieces": np.array(target),
            "target_input_pieces": np.array(pieces(tgt_tok, maps["target_input_ids"])),
            "source_text": np.array(line),
            "translation": np.array(tgt_tok.decode([list(generated)])[0]),
        }
        _save_npz(directory / f"{number:04d}.npz", arrays)
        heatmap_grid(
            maps["cross"],
            target,
            source,
            f"cross-attention, line {number + 1}: target pieces (rows) attending to source pieces (columns)",
            directory / f"{number:04d}.png",
        )
        drawn += 1
    return drawn


def write_lm_map(directory, model, tokenizer, ids: Sequence[int], number: int = 0) -> Path:
    """DIR/NNNN.npz and DIR/NNNN.png of a language model's self-attention over ``ids`` (one window)."""
    directory = Path(directory)
    maps = lm_attention(model, ids)
    labels = pieces(tokenizer, maps["ids"])
    _save_npz(directory / f"{number:04d}.npz", {**maps, "pieces": np.array(labels)})
    return heatmap_grid(
        maps["decoder_self"],
        labels,
        labels,
        "self-attention over the prompt and the generated text: queries (rows) attending to earlier tokens (columns)",
        directory / f"{number:04d}.png",
    )
