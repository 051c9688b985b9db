"""The road to the Transformer at step budgets: Kneser-Ney n-gram, Bengio's feed-forward LM, an LSTM LM and the
Transformer LM on the same data, tokenisation and windows, trained in this process.

    python -m benchmarks road --corpus shakespeare|wikitext2 [--models kn ffnn lstm transformer] [--steps N] [--stream]
                              [--json]

Corpora (TRANSFORMER_DATA, or --data-dir): tiny Shakespeare as characters (first 90% train, then 5% validation,
5% test) and WikiText-2 (the tokenised release) as words, split on spaces with one <eos> per line as the PyTorch
word_language_model example reads it (vocabulary 33,278 from the training file; its own valid/test files).

Every neural model trains on random windows (the LM task's LMBatcher) with Adam, warm-up then cosine decay, gradient
clipping at 1, for ``--steps`` steps (a step budget, never minutes), and is scored with transformer.tasks.lm_split_loss
on the same split prefix (``--eval-tokens``) with sliding windows (stride block/2): every token predicted once, from at
least block/2 tokens of context. The n-gram is fitted on the whole training split and scores the same tokens with its
full n-1 history. With ``--stream`` the LSTM trains and is scored as PyTorch's word_language_model example does it:
truncated BPTT over ``batch`` contiguous sub-streams of the training split (transformer.data.LMStreamBatcher), each
segment of ``block`` tokens from the previous one's final state (detached; zero at each pass's start), and scored with
its state carried over each whole split (lm_split_loss with streams=1). Reported: validation and test perplexity, parameters, the process CPU time of training (so that the
figure does not depend on how loaded the shared machine is; wall time too) and training tokens per CPU second.
"""

import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

import npgrad as ng
from npgrad import functional as F
from npgrad import optim

from benchmarks.meta import load_average, run_meta

SETTINGS = {
    # corpus -> batch, window, eval tokens per split, the models' configs (V filled in)
    "shakespeare": dict(
        batch=12,
        block=64,
        eval_tokens=0,  # 0: the whole split
        ngram=6,
        ffnn=dict(d_model=32, d_hidden=512, context_size=8),
        lstm=dict(d_model=128, d_hidden=256, n_layers=2, dropout=0.1),
        transformer=dict(d_model=128, n_heads=4, n_layers=4, dropout=0.0, bias=False),  # nanoGPT's CPU recipe
        lr=dict(ffnn=2e-3, lstm=2e-3, transformer=1e-3),
    ),
    "wikitext2": dict(
        batch=20,
        block=35,  # the PyTorch example's batch and bptt
        eval_tokens=40_000,
        ngram=4,
        ffnn=dict(d_model=64, d_hidden=128, context_size=4),
        lstm=dict(d_model=128, d_hidden=128, n_layers=2, dropout=0.2, tie_output=True),
        transformer=dict(d_model=128, n_heads=4, n_layers=2, dropout=0.1),
        lr=dict(ffnn=2e-3, lstm=3e-3, transformer=1e-3),
    ),
}


def data_dir(given):
    root = Path(given or os.environ.get("TRANSFORMER_DATA") or "")
    if not root.is_dir():
        sys.exit("road: set TRANSFORMER_DATA (or --data-dir) to the shared data directory")
    return root


def load_corpus(name, root):
    """(train, valid, test) int64 id streams and the vocabulary size."""
    if name == "shakespeare":
        text = (root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
        vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
        ids = np.array([vocab[ch] for ch in text], dtype=np.int64)
        a, b = int(0.9 * len(ids)), int(0.95 * len(ids))
        return ids[:a], ids[a:b], ids[b:], len(vocab)

    def words(text):
        return [w for line in text.splitlines() for w in line.split() + ["<eos>"]]

    folder = root / "wikitext2"
    with gzip.open(folder / "wiki.train.tokens.gz", "rt", encoding="utf-8") as handle:
        train = words(handle.read())
    vocab: dict[str, int] = {}
    for w in train:
        vocab.setdefault(w, len(vocab))
    splits = [train] + [words((folder / f"wiki.{s}.tokens").read_text(encoding="utf-8")) for s in ("valid", "test")]
    return (*(np.array([vocab[w] for w in s], dtype=np.int64) for s in splits), len(vocab))


def build(kind, vocab, settings, dtype="float32"):
    from transformer.model import LanguageModel, LMConfig
    from transformer.rnn import FeedForwardLM, FeedForwardLMConfig, RecurrentLM, RecurrentLMConfig

    common = dict(vocab_size=vocab, block_size=settings["block"], dtype=dtype, seed=0)
    if kind == "ffnn":
        return FeedForwardLM(FeedForwardLMConfig(**common, **settings["ffnn"]))
    if kind == "lstm":
        return RecurrentLM(RecurrentLMConfig(**common, **settings["lstm"]))
    return LanguageModel(LMConfig(**common, **settings["transformer"]))


def train(model, train_ids, settings, steps, lr, stream=False):
    from transformer.data import LMBatcher, LMStreamBatcher

    batcher: LMBatcher | LMStreamBatcher
    if stream:
        batcher = LMStreamBatcher(train_ids, block_size=settings["block"], batch_size=settings["batch"])
    else:
        batcher = LMBatcher(train_ids, block_size=settings["block"], batch_size=settings["batch"], seed=1)
    state = None  # --stream: the state the previous segment ended in (arrays: the gradient stops there)
    params = list(model.parameters())
    optimizer = optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    schedule = optim.WarmupCosineSchedule(
        optimizer, peak_lr=lr, warmup_steps=max(1, steps // 20), total_steps=steps, min_lr=lr / 10
    )
    model.train()
    cpu, wall = time.process_time(), time.perf_counter()
    losses = []
    tokens = 0
    for step in range(1, steps + 1):
        batch = batcher.sample()
        x, y = batch[0], batch[1]
        tokens += y.size
        if stream:
            logits, state = model.forward_state(x, None if batch.first else state)
        else:
            logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.data))
        if step % max(1, steps // 10) == 0:  # progress on stderr (the machine may be slow)
            print(f"step {step}/{steps} loss {losses[-1]:.3f} cpu {time.process_time() - cpu:.0f}s", file=sys.stderr)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return cpu, wall, float(np.mean(losses[-max(1, steps // 10) :])), tokens


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks road", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--models", nargs="*", default=["kn", "ffnn", "lstm", "transformer"])
    parser.add_argument("--steps", type=int, default=300, help="training steps of each neural model")
    parser.add_argument("--eval-tokens", type=int, default=None, help="score the first N tokens of each split")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="the LSTM (only) trains by truncated BPTT over contiguous sub-streams and is scored with its state "
        "carried; the other models are unchanged",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from transformer.ngram import KneserNeyLM
    from transformer.tasks import lm_split_loss

    settings = SETTINGS[args.corpus]
    train_ids, valid_ids, test_ids, vocab = load_corpus(args.corpus, data_dir(args.data_dir))
    limit = settings["eval_tokens"] if args.eval_tokens is None else args.eval_tokens
    if limit:
        valid_ids, test_ids = valid_ids[:limit], test_ids[:limit]
    load_before = load_average()
    rows = []
    for kind in args.models:
        row = {"model": kind, "corpus": args.corpus, "vocab": vocab, "train_tokens": len(train_ids)}
        if kind == "kn":
            cpu = time.process_time()
            lm = KneserNeyLM(settings["ngram"], vocab).fit(train_ids)
            row["train_cpu_s"] = time.process_time() - cpu
            row["order"] = settings["ngram"]
            for split, ids in (("valid", valid_ids), ("test", test_ids)):
                row[f"{split}_ppl"] = math.exp(-float(lm.token_log_probs(ids)[1:].mean()))
        else:
            ng.manual_seed(0)
            model = build(kind, vocab, settings)
            row["params"] = model.num_parameters()
            row["steps"] = args.steps
            stream = args.stream and kind == "lstm"
            cpu, wall, last_loss, tokens = train(model, train_ids, settings, args.steps, settings["lr"][kind], stream)
            if stream:
                row["batching"] = "stream"
            row.update(train_cpu_s=cpu, train_wall_s=wall, tokens_seen=tokens, tokens_per_cpu_s=tokens / cpu)
            row["train_loss_last_10pct"] = last_loss
            for split, ids in (("valid", valid_ids), ("test", test_ids)):
                if stream:
                    loss, _ = lm_split_loss(model, ids, settings["block"], streams=1)
                else:
                    loss, _ = lm_split_loss(model, ids, settings["block"], stride=settings["block"] // 2)
                row[f"{split}_ppl"] = math.exp(loss)
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = run_meta(
        "road",
        argv,
        1,
        load_before,
        None,
        eval_tokens=limit,
        batch=settings["batch"],
        block=settings["block"],
        stream=args.stream,
    )
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
