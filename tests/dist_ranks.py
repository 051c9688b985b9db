"""What tests/test_dist.py runs under ``mpiexec -n 2 python tests/dist_ranks.py MODE ...`` (not a test module).

MODE ``gradient``: a 2-rank data-parallel step on a random translation batch against the single-process gradient of
the whole batch (float64, label smoothing on, then global-norm clipping); prints ``ok`` from rank 0.

MODE ``train ARGS...``: ``python -m transformer ARGS...`` on every rank, with, on the ranks other than 0, a guard that
refuses every file write (``DIST_TEST_READ_ONLY=1``), and an error raised on rank 1 after step N
(``DIST_TEST_FAIL_AT=N``) or a hang there instead (``DIST_TEST_HANG_AT=N``: rank 1 sleeps without end).
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def gradient() -> int:
    import numpy as np

    from npgrad import optim
    from transformer.data import collate
    from transformer.dist import connect, digest_arrays
    from transformer.model import Transformer, TransformerConfig

    ranks = connect()
    assert ranks is not None and ranks.size == 2, ranks
    config = TransformerConfig(
        src_vocab_size=40,
        tgt_vocab_size=40,
        d_model=16,
        n_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        d_ff=32,
        dropout=0.0,
        dtype="float64",
        seed=5,
    )
    rng = np.random.default_rng(7)  # the same global batch on every rank: 7 pairs of mixed lengths
    pairs = [(rng.integers(4, 40, rng.integers(1, 9)), rng.integers(4, 40, rng.integers(1, 12))) for _ in range(7)]
    batch = collate([s for s, _ in pairs], [t for _, t in pairs])
    tokens = batch.num_tgt_tokens

    def loss_of(model, part):
        from npgrad import functional as F

        logits = model(part.src, part.tgt_in)  # (B, T, V)
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            part.tgt_out.reshape(-1),
            ignore_index=0,
            label_smoothing=0.1,
            reduction="sum",
        )

    model = Transformer(config)
    params = [p for p in model.parameters() if p.requires_grad]
    share = ranks.shard(batch)
    assert share is not None and 0 < len(share) < len(batch), share
    loss = loss_of(model, share)
    (loss * (1.0 / tokens)).backward()
    total = ranks.all_reduce_gradients(params, float(loss.data))
    optim.clip_grad_norm_(params, 0.05)
    everyone = ranks.comm.allgather(digest_arrays(p.grad for p in params))
    assert everyone[0] == everyone[1], "the ranks hold different gradients after the allreduce"
    if ranks.is_root:
        alone = Transformer(config)
        alone_params = [p for p in alone.parameters() if p.requires_grad]
        whole = loss_of(alone, batch)
        (whole * (1.0 / tokens)).backward()
        optim.clip_grad_norm_(alone_params, 0.05)
        np.testing.assert_allclose(total, float(whole.data), rtol=1e-12)
        for (name, _), p, q in zip(model.named_parameters(), params, alone_params):
            np.testing.assert_allclose(p.grad, q.grad, rtol=1e-9, atol=1e-13, err_msg=name)
        print("ok")
    return 0


def guard_writes(rank: int) -> None:
    """Every file write of this process raises (what the rank would have written is in the message)."""

    def refuse(what):
        raise PermissionError(f"rank {rank} (not 0) tried to write: {what}")

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            refuse(f"open({file!r}, {mode!r})")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(f"os.open({path!r})")
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for module, names in ((os, ("mkdir", "makedirs", "replace", "rename", "remove", "unlink", "rmdir")),
                          (shutil, ("rmtree", "copyfile", "copy", "copy2", "move"))):  # fmt: skip
        for name in names:
            setattr(module, name, lambda *args, _name=name, **kwargs: refuse(f"{_name}{args}"))
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train = lambda *args, **kwargs: refuse("a SentencePiece model")


def train(argv: list[str]) -> int:
    rank = int(os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)
    if rank != 0 and os.environ.get("DIST_TEST_READ_ONLY"):
        guard_writes(rank)
    fail_at = int(os.environ.get("DIST_TEST_FAIL_AT") or 0)
    hang_at = int(os.environ.get("DIST_TEST_HANG_AT") or 0)
    if rank == 1 and (fail_at or hang_at):
        import time

        from transformer.train import Trainer

        step = Trainer.train_step

        def failing_step(self, *args, **kwargs):
            if fail_at and self.state["step"] >= fail_at:
                raise RuntimeError(f"rank 1 fails on purpose after step {fail_at}")
            if hang_at and self.state["step"] >= hang_at:
                time.sleep(3600)
            return step(self, *args, **kwargs)

        Trainer.train_step = failing_step  # type: ignore[method-assign]
    from transformer.cli import main

    return main(argv)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit(gradient() if mode == "gradient" else train(rest))
