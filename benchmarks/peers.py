"""npgrad vs its exports: Hugging Face transformers (torch CPU) and CTranslate2 (float32, int8) on the same sentences.

    python -m benchmarks decode --peers [--checkpoint RUN] [--source FILE] [--sentences 1000] [--repeats 3]
                                        [--thread-counts 1 2] [--systems ...] [--json]
    python -m benchmarks export-check [--checkpoint RUN] [--source FILE] [--reference FILE] [--json]

The checkpoint (default: the Multi30k de->en model runs/kd_teacher of the main checkout) is exported once with
``transformer.export_hf`` / ``export_ct2`` into a scratch directory. Every system decodes the same source ids (our
SentencePiece, EOS appended, as ``translate`` does), sorted by length in batches of ``--batch-size`` sentences, with
the same per-sentence length limit ``floor(1.5 src_len + 10)`` (capped at max_len - 1); tokenisation and
detokenisation are outside the timing. Greedy and beam 5 (npgrad: GNMT length penalty alpha 0.6; transformers and
CTranslate2: their defaults, length / length^1.0).

``decode --peers`` times each (system, search) once per worker process, one worker per (repeat, thread count),
interleaved, so every thread count sees the same load; the table gives medians over the repeats. ``export-check``
measures exactness: the largest logit difference npgrad vs transformers (float32, teacher-forced on npgrad's greedy
outputs), greedy translations compared line by line (npgrad, HF generate, CTranslate2 float32/int8), beam-5 BLEU of
each.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.meta import load_average, print_result, run_meta

DEFAULT_CHECKPOINT = "/work/main/runs/kd_teacher"
SYSTEMS = ("npgrad", "hf", "ct2-float32", "ct2-int8")


def _default_source():
    data = os.environ.get("TRANSFORMER_DATA", "/work/shared/data")
    return str(Path(data) / "multi30k" / "test_2016_flickr.de.gz")


def read_lines(path, limit=None):
    path = Path(path)
    data = gzip.open(path, "rt", encoding="utf-8").read() if path.suffix == ".gz" else path.read_text("utf-8")
    lines = data.splitlines()
    return lines[:limit] if limit else lines


class Job:
    """The sentences as ids, their batches and limits, and the exported models (written once into ``workdir``)."""

    def __init__(self, checkpoint, source, sentences, batch_size, workdir):
        from transformer.cli import load_model

        self.checkpoint = checkpoint
        self.model, (self.src_tok, self.tgt_tok), _ = load_model(checkpoint, kind="translation")
        self.config = self.model.config
        self.lines = read_lines(source, sentences)
        limit = self.config.max_len - 1
        self.ids = [
            ids[: limit - 1] + [self.config.eos_id] for ids in self.src_tok.encode([s.strip() for s in self.lines])
        ]
        self.limits = np.minimum(np.floor(1.5 * np.array([len(i) for i in self.ids]) + 10).astype(int), limit)
        order = sorted(range(len(self.ids)), key=lambda i: -len(self.ids[i]))
        self.batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            src = np.full((len(rows), max(len(self.ids[i]) for i in rows)), self.config.pad_id, dtype=np.int64)
            for r, i in enumerate(rows):
                src[r, : len(self.ids[i])] = self.ids[i]
            self.batches.append((rows, src))
        self.workdir = Path(workdir)
        self.hf_dir, self.ct2_dir, self.ct2_int8_dir = (self.workdir / n for n in ("hf", "ct2", "ct2_int8"))

    def export(self):
        from transformer.export_ct2 import export_ct2
        from transformer.export_hf import export_hf

        if not self.hf_dir.exists():
            export_hf(self.checkpoint, self.hf_dir)
        if not self.ct2_dir.exists():
            export_ct2(self.checkpoint, self.ct2_dir)
        if not self.ct2_int8_dir.exists():
            export_ct2(self.checkpoint, self.ct2_int8_dir, quantization="int8")

    def text(self, tokens):
        return self.tgt_tok.decode([list(t) for t in tokens])

    def cut(self, row, tokens):
        """A system's output for sentence ``row`` as ours: up to EOS, without PAD/BOS, at most the sentence's limit."""
        tokens = [int(t) for t in tokens]
        if self.config.eos_id in tokens:
            tokens = tokens[: tokens.index(self.config.eos_id)]
        return tokens[: self.limits[row]]


def make_system(name, job, threads):
    if name == "npgrad":
        return Npgrad(job)
    if name == "hf":
        return HF(job, threads)
    return CT2(job, threads, name.split("-")[1])


class Npgrad:
    def __init__(self, job):
        self.job = job

    def decode(self, rows, src, beam):
        from transformer import search

        model, cap = self.job.model, self.job.config.max_len - 1
        if beam == 1:
            return search.greedy(model, src, max_len=cap, max_len_a=1.5, max_len_b=10).tokens
        hyps = search.beam_search(model, src, beam_size=beam, max_len=cap, alpha=0.6, max_len_a=1.5, max_len_b=10)
        return [h[0].tokens for h in hyps]


class HF:
    def __init__(self, job, threads):
        import torch
        import transformers

        torch.set_num_threads(threads)
        self.torch, self.job = torch, job
        self.model = transformers.MarianMTModel.from_pretrained(str(job.hf_dir)).eval()

    def decode(self, rows, src, beam):
        limit = int(self.job.limits[rows].max())
        with self.torch.no_grad():
            out = self.model.generate(
                input_ids=self.torch.from_numpy(src),
                attention_mask=self.torch.from_numpy(src != self.job.config.pad_id),
                num_beams=beam,
                do_sample=False,
                max_new_tokens=limit,
            ).numpy()
        return [self.job.cut(row, out[r, 1:]) for r, row in enumerate(rows)]

    def logits(self, src, tgt_in):
        with self.torch.no_grad():
            return self.model(
                input_ids=self.torch.from_numpy(src),
                attention_mask=self.torch.from_numpy(src != self.job.config.pad_id),
                decoder_input_ids=self.torch.from_numpy(tgt_in),
            ).logits.numpy()


class CT2:
    def __init__(self, job, threads, compute_type):
        import ctranslate2

        self.job = job
        self.pieces = [job.src_tok.processor.id_to_piece(i) for i in range(job.src_tok.vocab_size)]
        directory = job.ct2_int8_dir if compute_type == "int8" else job.ct2_dir
        self.translator = ctranslate2.Translator(
            str(directory), device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=threads
        )
        self.piece_id = job.tgt_tok.processor.piece_to_id

    def decode(self, rows, src, beam):
        # CTranslate2 appends </s> itself (add_source_eos): give it the pieces without our EOS.
        tokens = [[self.pieces[t] for t in self.job.ids[row][:-1]] for row in rows]
        results = self.translator.translate_batch(
            tokens, beam_size=beam, max_decoding_length=int(self.job.limits[rows].max()), max_batch_size=0
        )
        return [self.job.cut(row, [self.piece_id(p) for p in r.hypotheses[0]]) for row, r in zip(rows, results)]


def decode_all(system, job, beam, batches=None, cpu=None):
    """-> (wall seconds, outputs in sentence order); ``cpu`` (a list) receives the process CPU seconds (all threads),
    the figure a loaded machine disturbs least."""
    outputs = [None] * len(job.ids)
    start, start_cpu = time.perf_counter(), time.process_time()
    for rows, src in job.batches if batches is None else batches:
        for row, tokens in zip(rows, system.decode(rows, src, beam)):
            outputs[row] = tokens
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start, outputs


# ------------------------------------------------------------------------------------------------ speed
def worker(args):
    """One process, one thread count: time every (system, search) once; print JSON rows."""
    job = Job(args.checkpoint, args.source, args.sentences, args.batch_size, args.workdir)
    rows = []
    for name in args.systems:
        system = make_system(name, job, args.threads)
        decode_all(system, job, 1, job.batches[-1:])  # warm-up: compile kernels, allocate, load lazily
        for beam in (1, args.beam):
            load, cpu = load_average(), []
            seconds, _ = decode_all(system, job, beam, cpu=cpu)
            rows.append(
                {
                    "system": name,
                    "search": "greedy" if beam == 1 else f"beam{beam}",
                    "threads": args.threads,
                    "seconds": seconds,
                    "cpu_s": cpu[0],
                    "sentences_per_s": len(job.ids) / seconds,
                    "load_1min": load[0] if load else None,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps(rows))


def peers_main(args, argv):
    """Spawn one worker per (repeat, thread count), interleaved; medians per (system, search, threads)."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="peers-"))
    job = Job(args.checkpoint, args.source, args.sentences, args.batch_size, workdir)
    job.export()
    load_before = load_average()
    measured = []
    for repeat in range(args.repeats):
        for threads in args.thread_counts:
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
            env.update(NUMBA_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
            command = [sys.executable, "-m", "benchmarks", "decode", "--peers-worker", "--threads", str(threads)]
            command += ["--checkpoint", args.checkpoint, "--source", args.source, "--workdir", str(workdir)]
            command += ["--sentences", str(args.sentences), "--batch-size", str(args.batch_size)]
            command += ["--beam", str(args.beam), "--systems", *args.systems]
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            rows = json.loads(out.stdout.strip().splitlines()[-1])
            for row in rows:
                row["repeat"] = repeat
            measured += rows
            with open(workdir / "peers_rows.jsonl", "a", encoding="utf-8") as log:  # kept if the run is cut short
                log.writelines(json.dumps(row) + "\n" for row in rows)
            if not args.json:
                for row in rows:
                    print(
                        f"repeat {repeat} threads {threads} {row['system']:<12} {row['search']:<6} "
                        f"{row['sentences_per_s']:7.1f} sentences/s (load {row['load_1min']})",
                        flush=True,
                    )
    results = []
    for threads in args.thread_counts:
        for name in args.systems:
            for search in ("greedy", f"beam{args.beam}"):
                runs = [r for r in measured if (r["system"], r["search"], r["threads"]) == (name, search, threads)]
                median = statistics.median(r["seconds"] for r in runs)
                median_cpu = statistics.median(r["cpu_s"] for r in runs)
                results.append(
                    {
                        "system": name,
                        "search": search,
                        "threads": threads,
                        "median_s": median,
                        "sentences_per_s": len(job.ids) / median,
                        "median_cpu_s": median_cpu,
                        "sentences_per_cpu_s": len(job.ids) / median_cpu,
                        "runs_s": [r["seconds"] for r in runs],
                    }
                )
    for row in results:  # npgrad's speed as a fraction of each peer's, same search and threads
        ours = next(
            r for r in results if (r["system"], r["search"], r["threads"]) == ("npgrad", row["search"], row["threads"])
        )
        row["npgrad_relative"] = ours["sentences_per_s"] / row["sentences_per_s"] if "npgrad" in args.systems else None
    meta = run_meta(
        "decode",
        argv,
        list(args.thread_counts),
        load_before,
        checkpoint=args.checkpoint,
        source=args.source,
        sentences=len(job.ids),
        batch_size=args.batch_size,
        repeats=args.repeats,
    )
    meta["measured"] = measured
    print_result(meta, results, args.json)
    return 0


def add_peer_arguments(parser):
    parser.add_argument("--peers", action="store_true", help="npgrad vs transformers vs CTranslate2 (this module)")
    parser.add_argument("--peers-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--source", default=None, help="source sentences (default: Multi30k test_2016_flickr.de)")
    parser.add_argument("--workdir", default=None, help="where the exports go (default: a new temporary directory)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))


def run_peers(args, argv):
    args.source = args.source or _default_source()
    if args.peers_worker:
        worker(args)
        return 0
    return peers_main(args, argv)


# ------------------------------------------------------------------------------------------------ exactness
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks export-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--source", default=None)
    parser.add_argument("--reference", default=None, help="default: the source path with the target language")
    parser.add_argument("--sentences", type=int, default=0, help="the first N sentences (0: all)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import torch

    from transformer.evaluate import translation_scores

    torch.set_num_threads(1)
    source = args.source or _default_source()
    reference = args.reference or source.replace(".de", ".en")
    job = Job(args.checkpoint, source, args.sentences, args.batch_size, args.workdir or tempfile.mkdtemp(prefix="x-"))
    job.export()
    refs = read_lines(reference, args.sentences)
    load_before = load_average()
    systems = {name: make_system(name, job, 1) for name in SYSTEMS}
    greedy = {name: decode_all(system, job, 1)[1] for name, system in systems.items()}

    # Logits, teacher-forced on npgrad's greedy outputs (BOS + tokens), both models in float32.
    worst, scale = 0.0, 0.0
    for rows, src in job.batches:
        outs = [greedy["npgrad"][r] for r in rows]
        tgt_in = np.full((len(rows), 1 + max(len(o) for o in outs)), job.config.pad_id, dtype=np.int64)
        tgt_in[:, 0] = job.config.bos_id
        for r, o in enumerate(outs):
            tgt_in[r, 1 : 1 + len(o)] = o
        ours = job.model(src, tgt_in).data
        theirs = systems["hf"].logits(src, tgt_in)
        real = tgt_in != job.config.pad_id
        real[:, 0] = True
        worst = max(worst, float(np.abs(ours - theirs)[real].max()))
        scale = max(scale, float(np.abs(ours)[real].max()))

    # Marian's tokenizer against ours on the same raw lines.
    import transformers

    tokenizer = transformers.MarianTokenizer.from_pretrained(str(job.hf_dir))
    same_ids = sum(tokenizer(line.strip())["input_ids"] == ids for line, ids in zip(job.lines, job.ids))

    texts = {name: job.text(out) for name, out in greedy.items()}
    differing = {}
    for name in SYSTEMS[1:]:
        rows = [i for i in range(len(job.ids)) if greedy[name][i] != greedy["npgrad"][i]]
        differing[name] = [
            {
                "line": i + 1,
                "npgrad": texts["npgrad"][i],
                name: texts[name][i],
                "first_difference": next(
                    (t for t, (a, b) in enumerate(zip(greedy["npgrad"][i], greedy[name][i])) if a != b),
                    min(len(greedy["npgrad"][i]), len(greedy[name][i])),
                ),
                "npgrad_top2_gap": _top2_gap(job, i, greedy["npgrad"][i], greedy[name][i]),
            }
            for i in rows
        ]
    beam = {name: job.text(decode_all(system, job, args.beam)[1]) for name, system in systems.items()}
    results = {
        "max_abs_logit_difference_npgrad_vs_hf": worst,
        "max_abs_logit": scale,
        "marian_tokenizer_same_ids": same_ids,
        "sentences": len(job.ids),
        "greedy_identical_to_npgrad": {name: len(job.ids) - len(differing[name]) for name in SYSTEMS[1:]},
        "greedy_differing": differing,
        "greedy_bleu": {name: translation_scores(texts[name], [refs])["bleu"] for name in SYSTEMS},
        f"beam{args.beam}_bleu": {name: translation_scores(beam[name], [refs])["bleu"] for name in SYSTEMS},
    }
    meta = run_meta("export-check", argv, 1, load_before, checkpoint=args.checkpoint, source=source)
    print_result(meta, results, args.json)
    return 0


def _top2_gap(job, row, ours, theirs):
    """npgrad's margin between its best and second-best log-probability at the first step where the outputs part."""
    from transformer.search import _log_softmax

    step = next((t for t, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    src = np.asarray([job.ids[row]])
    tgt_in = np.asarray([[job.config.bos_id] + list(ours[:step])])
    logits = job.model(src, tgt_in).data[0, -1][None]
    top = np.sort(_log_softmax(logits, step)[0])[::-1]
    return float(top[0] - top[1])


if __name__ == "__main__":
    sys.exit(main())
