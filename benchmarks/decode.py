"""Greedy and beam-5 decoding of 1,000 sentences with the KV cache, and the speed-up over no cache.

    python -m benchmarks decode [--sentences 1000] [--batch-size 100] [--max-len 40] [--beam 5]
                                [--no-cache-sentences 100] [--threads 2] [--json]
    python -m benchmarks decode --peers ...   npgrad vs transformers vs CTranslate2 (see benchmarks/peers.py)

The model is the reference seq2seq configuration (d_model 256, 3+3 layers, 4 heads, d_ff 1024, shared
vocabulary 8000, sinusoidal, post-LN, float32), randomly initialised: the work, not the translations,
is measured. Source sentences have Multi30k-like lengths (subword tokens: mean ~16, 4 to 40, seeded),
sorted by length and decoded in batches of ``--batch-size`` sentences, as ``translate`` does.

Every sentence is decoded to exactly ``--max-len`` target tokens: EOS is suppressed by pointing the
model's ``eos_id`` at BOS, which the search never emits (transformer/search.py forbids PAD and BOS),
so no hypothesis finishes early and the cached and uncached runs do the same number of steps.

* cached: ``transformer.search.greedy`` / ``beam_search`` with ``use_cache=True`` (encoder keys/values
  computed once per sentence, self-attention keys/values appended per step) on all sentences;
* no cache (``use_cache=False``: the whole prefix through ``model.forward`` at every step) is ~O(L^2)
  and slow, so it runs on the first ``--no-cache-sentences`` sentences of the same order (a subset
  spread over the length range), the cached search is timed on the same subset, and the speed-up is the
  ratio of those two times; the cached and uncached tokens are compared for equality there.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.meta import load_average, print_result, run_meta

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def source_sentences(n, vocab, seed=0):
    """n source sentences (ids in [4, vocab)) with Multi30k-like subword lengths, as a list of arrays."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.normal(16.0, 6.0, n)), 4, 40).astype(int)
    return [rng.integers(4, vocab, size=length) for length in lengths]


def batches_of(sentences, batch_size):
    """Sorted by length (longest first), padded with PAD: a list of (B, S) int64 arrays."""
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [sentences[i] for i in order[start : start + batch_size]]
        src = np.full((len(chunk), max(len(s) for s in chunk)), PAD, dtype=np.int64)
        for row, s in enumerate(chunk):
            src[row, : len(s)] = s
        out.append(src)
    return out


def build_model(vocab, max_len):
    from transformer.model import Transformer, TransformerConfig

    model = Transformer(
        TransformerConfig(
            src_vocab_size=vocab,
            tgt_vocab_size=vocab,
            d_model=256,
            n_heads=4,
            num_encoder_layers=3,
            num_decoder_layers=3,
            d_ff=1024,
            dropout=0.1,
            norm_first=False,
            positional="sinusoidal",
            share_embeddings=True,
            tie_output=True,
            max_len=max(256, max_len + 1),
            pad_id=PAD,
            unk_id=UNK,
            bos_id=BOS,
            eos_id=EOS,
            dtype="float32",
            seed=0,
        )
    )
    model.eval()
    model.config.eos_id = BOS  # EOS suppressed: every hypothesis runs to max_len (see module doc)
    return model


def decode_all(model, batches, mode, beam, max_len, use_cache):
    """-> (seconds, list of token lists) for all batches."""
    from transformer import search

    tokens = []
    start = time.perf_counter()
    for src in batches:
        if mode == "greedy":
            out = search.greedy(model, src, max_len=max_len, use_cache=use_cache)
            tokens.extend(out.tokens)
        else:
            out = search.beam_search(model, src, beam_size=beam, max_len=max_len, alpha=0.6, use_cache=use_cache)
            tokens.extend(hyps[0].tokens for hyps in out)
    return time.perf_counter() - start, tokens


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=100, help="sentences per decoding batch")
    parser.add_argument("--max-len", type=int, default=40, help="target tokens generated per sentence")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument(
        "--no-cache-sentences",
        type=int,
        default=100,
        help="sentences decoded without the cache (and again with it) for the speed-up",
    )
    parser.add_argument("--modes", nargs="+", choices=["greedy", "beam"], default=["greedy", "beam"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    from benchmarks.peers import add_peer_arguments, run_peers

    add_peer_arguments(parser)
    args = parser.parse_args(argv)
    if args.peers or args.peers_worker:  # npgrad vs transformers vs CTranslate2: benchmarks/peers.py
        return run_peers(args, argv)

    from benchmarks.step import _pin_blas_threads, _set_threads

    _pin_blas_threads(args.threads, ["-m", "benchmarks", "decode"] + list(sys.argv[2:] if argv is None else argv))
    _set_threads(args.threads)
    vocab = 8000
    model = build_model(vocab, args.max_len)
    sentences = source_sentences(args.sentences, vocab)
    batches = batches_of(sentences, args.batch_size)
    # The no-cache subset: every k-th sentence of the sorted order, so it spans the length range.
    stride = max(1, args.sentences // max(1, args.no_cache_sentences))
    subset = [s for i, s in enumerate(sorted(sentences, key=len, reverse=True)) if i % stride == 0]
    subset = subset[: args.no_cache_sentences]
    subset_batches = batches_of(subset, args.batch_size)

    decode_all(model, batches_of(sentences[:8], 8), "greedy", args.beam, 3, True)  # warm-up: compile kernels
    load_before = load_average()
    results = []
    for mode in args.modes:
        cached_s, _ = decode_all(model, batches, mode, args.beam, args.max_len, True)
        row = {
            "mode": mode if mode == "greedy" else f"beam{args.beam}",
            "sentences": len(sentences),
            "cached_s": cached_s,
            "cached_sentences_per_s": len(sentences) / cached_s,
        }
        if args.no_cache_sentences > 0:
            sub_cached_s, sub_cached_tokens = decode_all(model, subset_batches, mode, args.beam, args.max_len, True)
            sub_full_s, sub_full_tokens = decode_all(model, subset_batches, mode, args.beam, args.max_len, False)
            row.update(
                {
                    "subset_sentences": len(subset),
                    "subset_cached_s": sub_cached_s,
                    "subset_no_cache_s": sub_full_s,
                    "cache_speedup": sub_full_s / sub_cached_s,
                    "no_cache_sentences_per_s": len(subset) / sub_full_s,
                    "no_cache_s_scaled_to_all": sub_full_s * len(sentences) / len(subset),
                    "same_tokens": sub_cached_tokens == sub_full_tokens,
                }
            )
        results.append(row)
        if not args.json:
            print(_format_row(row), flush=True)
    meta = run_meta(
        "decode",
        argv,
        args.threads,
        load_before,
        dtype="float32",
        max_len=args.max_len,
        batch_size=args.batch_size,
        source_length_mean=float(np.mean([len(s) for s in sentences])),
    )
    print_result(meta, results, args.json)
    return 0


def _format_row(row):
    text = (
        f"{row['mode']:<7} cached: {row['sentences']} sentences in {row['cached_s']:.1f} s = "
        f"{row['cached_sentences_per_s']:.1f} sentences/s"
    )
    if "cache_speedup" in row:
        text += (
            f";  subset of {row['subset_sentences']}: cached {row['subset_cached_s']:.1f} s, no cache "
            f"{row['subset_no_cache_s']:.1f} s -> cache speed-up {row['cache_speedup']:.1f}x "
            f"(same tokens: {row['same_tokens']})"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
