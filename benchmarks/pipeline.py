"""The real training pipeline's throughput against the bare training step on the same batches.

``python -m benchmarks pipeline [--config multi30k_de_en] [--steps 6] [--threads 1] [--json]``

Builds the translation task of a config exactly as ``python -m transformer train`` does (corpus, SentencePiece,
token-bucketed batches), then alternates, step by step on the same model:

* pipeline: ``Trainer.train_step`` (fetching and padding the next batch included) plus what the loop adds around it
  (the JSON-lines record, the progress bookkeeping), i.e. one iteration of ``Trainer.run`` without validation and
  checkpoints;
* bare: forward, backward and the Adam update on a batch that was collated beforehand.

Both draw from the same token-bucketed stream (the bare side's batch is fetched outside its timing), so the ratio of
their median target tokens/s is the pipeline's efficiency. Target: >= 90%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def training_benchmark_args(name, doc, argv, config, steps, steps_help):
    """The options of a benchmark of training steps on a config (--config, --steps, --threads, --json), the thread
    counts set before numpy is imported."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=doc.split("\n\n")[0])
    parser.add_argument("--config", default=config)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads))
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    return args


def translation_trainer(config_name, overrides=()):
    """(task, trainer) of a translation config, built as ``python -m transformer train`` builds them, in a temporary
    run directory."""
    from transformer.config import load_config
    from transformer.tasks import TranslationTask
    from transformer.train import Trainer, train_settings

    config = load_config(config_name, ["train.max_steps=1000", "train.max_minutes=0", *overrides])
    settings = train_settings(config["train"])
    run_dir = tempfile.mkdtemp(prefix="bench-run-")
    task = TranslationTask(config, run_dir, settings)
    return task, Trainer(task, run_dir, settings)


def main(argv=None):
    args = training_benchmark_args("pipeline", __doc__, argv, "multi30k_de_en", 6, "measured steps per contender")

    from benchmarks.meta import load_average, run_meta
    from transformer.train import JsonLog

    task, trainer = translation_trainer(args.config)
    settings = trainer.s
    trainer.log = JsonLog(trainer.run_dir / "log.jsonl")
    model, optimizer = trainer.model, trainer.optimizer
    model.train()

    def bare_step(batch):
        optimizer.zero_grad()
        loss = task.loss(model, batch, label_smoothing=settings["label_smoothing"])
        (loss * (1.0 / batch.num_tgt_tokens)).backward()
        optimizer.step()

    def pipeline_step():
        loss, tokens, lr, _ = trainer.train_step()
        trainer.state["step"] += 1
        trainer.log.write({"type": "train", "step": trainer.state["step"], "loss": loss, "lr": lr, "tokens": tokens})
        return tokens

    # Warm-up (Numba compilation, first-touch of buffers).
    pipeline_step()
    bare_step(task.next_batch())
    load_before = load_average()
    pipe_rates, bare_rates, fetch_ms = [], [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        tokens = pipeline_step()
        pipe_rates.append(tokens / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        batch = task.next_batch()
        fetch_ms.append(1000 * (time.perf_counter() - t0))
        t0 = time.perf_counter()
        bare_step(batch)
        bare_rates.append(batch.num_tgt_tokens / (time.perf_counter() - t0))
    trainer.log.close()
    result = {
        "config": args.config,
        "steps": args.steps,
        "pipeline_tok_per_s": statistics.median(pipe_rates),
        "bare_tok_per_s": statistics.median(bare_rates),
        "efficiency": statistics.median(pipe_rates) / statistics.median(bare_rates),
        "batch_fetch_ms_median": statistics.median(fetch_ms),
        "meta": run_meta("pipeline", argv, args.threads, load_before),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"pipeline {result['pipeline_tok_per_s']:,.0f} tok/s, bare step {result['bare_tok_per_s']:,.0f} tok/s: "
            f"efficiency {100 * result['efficiency']:.1f}% (target >= 90%); fetching+padding a batch "
            f"{result['batch_fetch_ms_median']:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
