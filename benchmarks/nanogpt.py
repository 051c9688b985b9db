"""nanoGPT's CPU recipe on tiny Shakespeare, trained by npgrad and by PyTorch side by side.

    python -m benchmarks nanogpt [--iters 2000] [--json] [--threads 2] [--init ours|nanogpt] [--data-dir DIR]

The recipe (nanoGPT's README, "I only have a macbook"; configs/shakespeare_char.toml): characters,
4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, no dropout, no biases,
tied input/output embeddings, GELU, pre-LN, learned positions; AdamW (0.9, 0.99), weight decay
0.1 on the 2-D weights only, learning rate 1e-3 with 100 warmup steps and cosine decay to 1e-4
at the last iteration, gradient clipping at 1.0.

Both contenders train the identical model from the identical start on the identical batches:

* the weights are drawn once with NumPy and copied into both models: by default npgrad's own
  ``LanguageModel`` init (what ``lm-train`` trains: embeddings N(0, 0.02), projections
  Xavier-uniform, seeded by the config's seed), or with ``--init nanogpt`` nanoGPT's
  ``_init_weights`` (every matrix N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 n_layers)));
* the training windows come from one seeded ``LMBatcher`` stream, drawn before timing;
* the learning rate of every update comes from the same ``WarmupCosineSchedule`` formula;
* npgrad uses the project's own optimizer and schedule builders (``transformer.train``) with the
  settings of ``configs/shakespeare_char.toml``; PyTorch uses ``torch.optim.AdamW`` with two
  parameter groups (decay / no decay) and ``clip_grad_norm_``.

Timing: the wall time of the training iterations only (evaluation excluded). The machine is
shared and its speed drifts, so the contenders alternate in chunks of ``--chunk`` iterations
(each keeps its own state), and both see the same load over the run. The load average is printed
before and after. Before timing, each contender runs one forward/backward on a throwaway copy
(Numba compilation, PyTorch's first-call set-up).

Validation after training, for each contender: nanoGPT's estimate (mean loss of ``--eval-iters``
random batches of 12 windows, the same batches for both) and the exact loss of the whole
validation split (non-overlapping windows of 64, every token predicted once).
PyTorch is optional: without it, npgrad runs alone and the ratio is omitted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks nanogpt", description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=2000, help="training iterations (the cosine decays over them)")
    p.add_argument("--threads", type=int, default=2, help="BLAS/Numba/PyTorch threads for both contenders")
    p.add_argument("--chunk", type=int, default=50, help="iterations per turn when alternating contenders")
    p.add_argument("--eval-iters", type=int, default=20, help="batches per split for nanoGPT's loss estimate")
    p.add_argument("--seed", type=int, default=1337, help="weights and batches (nanoGPT's seed)")
    p.add_argument(
        "--init",
        choices=["ours", "nanogpt"],
        default="ours",
        help="npgrad's LanguageModel init (as lm-train) or nanoGPT's N(0, 0.02) init",
    )
    p.add_argument("--config", default="shakespeare_char", help="the recipe's config (model and train sections)")
    p.add_argument("--data-dir", help="cache directory holding tinyshakespeare/ (default TRANSFORMER_DATA)")
    p.add_argument("--no-torch", action="store_true", help="run npgrad alone")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return p.parse_args(argv)


def set_threads(threads):
    """Ask OpenBLAS, OpenMP and Numba for ``threads`` threads; they read it once, when numpy/numba load.

    A module that imports numpy before this runs silently leaves OpenBLAS at one thread per core, which on
    this shared machine made npgrad's matrix products 5-7x slower (a 480 ms iteration instead of 75 ms),
    so an already imported numpy with a different setting is an error, not a measurement.
    """
    wanted = str(threads)
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    for module, name in (("numpy", "OPENBLAS_NUM_THREADS"), ("numba", "NUMBA_NUM_THREADS")):
        if module in sys.modules and os.environ.get(name) != wanted:
            raise SystemExit(
                f"{module} was imported before the benchmark could set {threads} thread(s): "
                f"run it as `{name}={threads} python -m benchmarks ...`"
            )
    for name in names:
        os.environ[name] = wanted  # --threads wins over whatever the environment says


# ------------------------------------------------------------------------------------ shared set-up
def nanogpt_init(named_shapes, n_layers, seed):
    """nanoGPT's ``_init_weights`` drawn with NumPy, in npgrad's layout ((in, out) matrices):
    every matrix and embedding N(0, 0.02), the residual projections (attention output, second
    feed-forward layer) N(0, 0.02 / sqrt(2 n_layers)), LayerNorm gains 1."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in named_shapes:
        if len(shape) == 1:
            weights[name] = np.ones(shape, dtype=np.float32)
            continue
        std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("out_proj.weight", "linear2.weight")) else 0.02
        weights[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    return weights


class Data:
    """Tiny Shakespeare as characters, split 90/10, with every batch both contenders will see."""

    def __init__(self, args, block_size, batch_size, train_fraction):
        import numpy as np
        from transformer.data import LMBatcher, split_stream
        from transformer.datasets import load_tinyshakespeare
        from transformer.tokenizer import CharTokenizer

        text = load_tinyshakespeare(data_dir=args.data_dir)
        self.tokenizer = CharTokenizer.from_text(text)
        ids = np.asarray(self.tokenizer.encode([text])[0], dtype=np.int64)
        self.train, self.val = split_stream(ids, train_fraction)
        stream = LMBatcher(self.train, block_size=block_size, batch_size=batch_size, seed=args.seed)
        self.batches = [stream.sample() for _ in range(args.iters)]  # (x, y), each (B, L)
        self.eval_batches = {}
        for split, ids_, seed in (("train", self.train, 1), ("val", self.val, 2)):
            sampler = LMBatcher(ids_, block_size=block_size, batch_size=batch_size, seed=[args.seed, seed])
            self.eval_batches[split] = [sampler.sample() for _ in range(args.eval_iters)]


# ------------------------------------------------------------------------------------ npgrad
PHASES = ("forward", "backward", "clip", "optimizer")  # of an iteration, in order, as step() marks them


def _no_mark(phase):
    pass


class NpgradContender:
    name = "npgrad"

    def __init__(self, model_cfg, settings, weights):
        from npgrad import functional as F, optim
        from transformer.model import LanguageModel
        from transformer.train import build_optimizer, build_schedule

        self.F, self.optim = F, optim
        self.model = LanguageModel(model_cfg)
        if weights is not None:
            self.model.load_state_dict(weights)
        self.model.train()
        self.settings = settings
        self.optimizer = build_optimizer(self.model, settings)
        self.schedule = build_schedule(self.optimizer, settings, settings["max_steps"])
        self.losses = []

    def state(self):
        return {name: p.data.copy() for name, p in self.model.named_parameters()}

    def warm_up(self, model_cfg, batch):
        """One forward/backward on a throwaway model: compiles (or loads) the Numba kernels."""
        from transformer.model import LanguageModel

        scratch = LanguageModel(model_cfg)
        x, y = batch
        logits = scratch(x)
        self.F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()

    def step(self, x, y, mark=_no_mark):
        """One training iteration; ``mark(phase)`` is called as each of PHASES ends (nanogpt-split times them)."""
        self.optimizer.zero_grad()
        logits = self.model(x)  # (B, L, V)
        loss = self.F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        mark("forward")
        loss.backward()
        mark("backward")
        self.optim.clip_grad_norm_(self.optimizer.params, self.settings["clip_norm"])
        mark("clip")
        self.optimizer.step()
        self.schedule.step()
        self.losses.append(float(loss.data))
        mark("optimizer")

    def logits(self, x):
        import npgrad as ng

        with ng.no_grad():
            return self.model(x).data

    def estimate(self, batches):
        import numpy as np
        import npgrad as ng

        self.model.eval()
        with ng.no_grad():
            out = [
                float(self.F.cross_entropy(self.model(x).reshape(-1, self.model.config.vocab_size), y.reshape(-1)).data)
                for x, y in batches
            ]
        self.model.train()
        return float(np.mean(out))

    def split_loss(self, ids, block_size):
        from transformer.tasks import lm_split_loss

        loss, _ = lm_split_loss(self.model, ids, block_size)
        self.model.train()
        return loss


# ------------------------------------------------------------------------------------ PyTorch
class TorchContender:
    """nanoGPT's GPT for the recipe's options: benchmarks/torch_twins.py's LanguageModelTwin."""

    name = "pytorch"

    def __init__(self, torch, model_cfg, settings, weights):
        from benchmarks import torch_twins

        self.torch, self.twin = torch, torch_twins.LanguageModelTwin
        self.model = self.twin(**model_cfg.to_dict())
        torch_twins.load_npgrad_weights(self.model, weights)
        self.model.train()
        self.settings = settings
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=settings["lr"],
            betas=tuple(settings["betas"]),
            eps=settings["eps"],
        )
        from npgrad import optim

        self.lr_at = optim.WarmupCosineSchedule.lr_at.__get__(_ScheduleFormula(settings))
        self.iteration = 0
        self.losses = []

    def warm_up(self, model_cfg, batch):
        scratch = self.twin(**model_cfg.to_dict())
        x, y = (self.torch.from_numpy(a) for a in batch)
        scratch.loss(scratch(x), y).backward()

    def step(self, x, y, mark=_no_mark):
        """One training iteration, marking the same PHASES as NpgradContender.step."""
        torch = self.torch
        self.iteration += 1
        lr = self.lr_at(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        logits = self.model(x)
        loss = self.model.loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        mark("forward")
        loss.backward()
        mark("backward")
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings["clip_norm"])
        mark("clip")
        self.optimizer.step()
        self.losses.append(float(loss.item()))
        mark("optimizer")

    def logits(self, x):
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(x)).numpy()

    def estimate(self, batches):
        torch = self.torch
        self.model.eval()
        with torch.no_grad():
            out = [float(self.model.loss(self.model(torch.from_numpy(x)), torch.from_numpy(y))) for x, y in batches]
        self.model.train()
        return sum(out) / len(out)

    def split_loss(self, ids, block_size, batch_size=32):
        """The same windows as ``transformer.tasks.lm_split_loss``."""
        import numpy as np
        from transformer.data import sequential_windows

        torch = self.torch
        windows = list(sequential_windows(ids, block_size))
        full = [w for w in windows if w[0].size == block_size]
        tail = [w for w in windows if w[0].size != block_size]
        groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[w] for w in tail]
        total, count = 0.0, 0
        self.model.eval()
        with torch.no_grad():
            for group in groups:
                x = torch.from_numpy(np.stack([w[0] for w in group]))
                y = torch.from_numpy(np.stack([w[1] for w in group]))
                total += float(
                    torch.nn.functional.cross_entropy(self.model(x).flatten(0, 1), y.flatten(), reduction="sum")
                )
                count += y.numel()
        self.model.train()
        return total / count


class _ScheduleFormula:
    """The attributes WarmupCosineSchedule.lr_at reads, without an npgrad optimizer behind it."""

    def __init__(self, s):
        self.peak_lr, self.min_lr = float(s["lr"]), float(s["min_lr"])
        self.warmup_steps, self.total_steps = int(s["warmup_steps"]), int(s["max_steps"])


# ------------------------------------------------------------------------------------ main
def setup(args, torch, max_steps=None):
    """The recipe of ``args.config`` -> (data, model config, npgrad contender, PyTorch contender or None), both
    contenders starting from the same weights. ``max_steps``: the schedule's length (default ``args.iters``)."""
    from transformer.config import load_config
    from transformer.model import LMConfig
    from transformer.train import train_settings

    max_steps = args.iters if max_steps is None else max_steps
    config = load_config(args.config)
    settings = train_settings(
        {
            **config["train"],
            "max_steps": max_steps,
            "warmup_steps": min(int(config["train"].get("warmup_steps", 0)), max_steps),
        }
    )
    if settings["lr_schedule"] != "cosine" or settings["optimizer"] != "adamw":
        raise SystemExit(f"{args.config}: this benchmark reproduces an AdamW + cosine recipe")
    data_fraction = float(config.get("data", {}).get("train_fraction", 0.9))
    model_section = dict(config["model"])
    model_section.setdefault("seed", args.seed)
    probe = LMConfig(vocab_size=65, **model_section)
    data = Data(args, probe.block_size, int(settings["batch_size"]), data_fraction)
    model_cfg = LMConfig(vocab_size=data.tokenizer.vocab_size, **model_section)
    for key, wanted in (
        ("dropout", 0.0),
        ("bias", False),
        ("tie_output", True),
        ("norm_first", True),
        ("positional", "learned"),
        ("activation", "gelu"),
    ):
        if getattr(model_cfg, key) != wanted:
            raise SystemExit(
                f"{args.config}: the PyTorch contender is nanoGPT's model; it needs model.{key}={wanted!r}"
            )

    ours = NpgradContender(model_cfg, settings, None)
    if args.init == "nanogpt":
        weights = nanogpt_init([(n, p.shape) for n, p in ours.model.named_parameters()], model_cfg.n_layers, args.seed)
        ours.model.load_state_dict(weights)
    else:
        weights = ours.state()
    theirs = None if torch is None else TorchContender(torch, model_cfg, settings, weights)
    return data, model_cfg, ours, theirs


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    set_threads(args.threads)
    import numpy as np
    from benchmarks.meta import import_torch, load_average, run_meta

    torch = None if args.no_torch else import_torch(args.threads)
    if torch is None and not args.no_torch:
        print("PyTorch is not installed (pip install 'npgrad[bench]'): running npgrad alone", file=sys.stderr)
    data, model_cfg, ours, theirs = setup(args, torch)
    contenders = [ours] + ([theirs] if theirs is not None else [])
    load_before = load_average()

    report = {
        "benchmark": "nanoGPT CPU recipe, tiny Shakespeare (char)",
        "iters": args.iters,
        "config": args.config,
        "init": args.init,
        "seed": args.seed,
        "parameters": int(sum(p.data.size for p in ours.model.parameters())),
    }
    x0 = data.batches[0][0]
    if torch is not None:
        report["initial_max_abs_logit_diff"] = float(np.max(np.abs(ours.logits(x0) - contenders[1].logits(x0))))
    for c in contenders:
        c.warm_up(model_cfg, data.batches[0])

    # Alternate in chunks so both contenders see the same machine load; rotate who goes first.
    times = {c.name: [] for c in contenders}
    for turn, start in enumerate(range(0, args.iters, args.chunk)):
        order = contenders if turn % 2 == 0 else contenders[::-1]
        for c in order:
            for x, y in data.batches[start : start + args.chunk]:
                t0 = time.perf_counter()
                c.step(x, y)
                times[c.name].append(time.perf_counter() - t0)
        done = min(start + args.chunk, args.iters)  # progress on stderr; stdout has the result
        print(
            f"  {done}/{args.iters}  "
            + "  ".join(
                f"{c.name} loss {c.losses[-1]:.4f} {1000 * sum(times[c.name][-args.chunk :]) / args.chunk:.1f} ms/it"
                for c in contenders
            ),
            file=sys.stderr,
            flush=True,
        )
    report["meta"] = run_meta("nanogpt", argv, args.threads, load_before, torch, dtype="float32", chunk=args.chunk)

    results = {}
    for c in contenders:
        t = np.asarray(times[c.name])
        results[c.name] = {
            "wall_s": float(t.sum()),
            "ms_per_iter_median": float(1000 * np.median(t)),
            "ms_per_iter_mean": float(1000 * t.mean()),
            "final_train_batch_loss": c.losses[-1],
            "train_loss_estimate": c.estimate(data.eval_batches["train"]),
            "val_loss_estimate": c.estimate(data.eval_batches["val"]),
            "val_loss_exact": c.split_loss(data.val, model_cfg.block_size),
        }
    report["results"] = results
    if torch is not None:
        report["wall_ratio_npgrad_over_pytorch"] = results["npgrad"]["wall_s"] / results["pytorch"]["wall_s"]
    report["targets"] = {"val_loss_estimate <= 1.88": results["npgrad"]["val_loss_estimate"] <= 1.88}
    if torch is not None:
        report["targets"]["wall ratio <= 1.0"] = report["wall_ratio_npgrad_over_pytorch"] <= 1.0

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


def format_report(r):
    m, v = r["meta"], r["meta"]["versions"]
    lines = [
        f"{r['benchmark']}: {r['iters']} iterations, {r['parameters']:,} parameters, init {r['init']}, "
        f"seed {r['seed']}",
        f"machine: {m['machine']}, {m['cpus']} cores, {m['threads']} threads; python {v['python']}, "
        f"numpy {v['numpy']}, numba {v['numba']}, torch {v.get('torch')}",
        f"load average (1, 5, 15 min): before {m['load_average_before']}, after {m['load_average_after']}",
    ]
    if "initial_max_abs_logit_diff" in r:
        lines.append(f"same start: max |logit difference| at init {r['initial_max_abs_logit_diff']:.2e}")
    lines += [
        "",
        f"| {'contender':<9} | wall (s) | ms/iter (median) | val loss (estimate) | val loss (exact) "
        f"| train loss (estimate) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in r["results"].items():
        lines.append(
            f"| {name:<9} | {s['wall_s']:.1f} | {s['ms_per_iter_median']:.1f} | "
            f"{s['val_loss_estimate']:.4f} | {s['val_loss_exact']:.4f} | {s['train_loss_estimate']:.4f} |"
        )
    if "wall_ratio_npgrad_over_pytorch" in r:
        lines.append(f"\nwall-time ratio npgrad / PyTorch: {r['wall_ratio_npgrad_over_pytorch']:.2f}")
    lines.append("targets: " + ", ".join(f"{k}: {'met' if v else 'missed'}" for k, v in r["targets"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
