"""Data-parallel training on MPI (transformer/dist.py), with real ranks: ``mpiexec -n 2`` subprocesses on the tiny config.

- A 2-rank step's gradient is the single-process gradient of the joined batch (tests/dist_ranks.py ``gradient``).
- A 2-rank run ends with the weights of a 1-process run over the same global batches (dropout off: the ranks draw
  their own masks), to float32 round-off; the ranks stay bit-identical (checked at every checkpoint by the run).
- Rank 1 writes nothing (every write it tries raises); rank 0 writes the log, checkpoints, config and tokenizer.
- A 2-rank job killed (SIGKILL, every process) after step 3 and resumed is bit-identical to the uninterrupted run,
  dropout on (each rank's dropout stream is in the checkpoint).
- A rank that raises, or hangs, ends the job with its message (no hang).
- Without mpi4py, a multi-rank launch says to install the 'dist' extra.

Skipped when mpi4py or mpiexec is missing (the 'dist' extra). The sharding itself is tested without MPI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgrad as ng
from transformer import cli
from transformer.checkpoint import MANIFEST
from transformer.data import collate
from transformer.dist import launched_ranks, shard_batch, shard_bounds

from test_train import (
    SUBPROCESS_BACKEND,
    assert_bit_identical,
    checkpoint_dir,
    final_state,
    run_cli,
    train_args,
    train_records,
    wait_for_steps,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "dist_ranks.py"
STEPS = 7
TIMEOUT = 300  # seconds a 2-rank subprocess may take on a loaded machine before the test fails (instead of hanging)


def mpiexec():
    pytest.importorskip("mpi4py", reason="the 'dist' extra (mpi4py) is not installed")  # (MPI starts in the ranks)
    found = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if found is None:
        pytest.skip("no mpiexec (the 'dist' extra installs mpich's)")
    return found


def run_ranks(*args, env=None, check=True):
    """``mpiexec -n 2 python tests/dist_ranks.py ARGS``: (exit status, stdout, stderr)."""
    environment = dict(os.environ, NPGRAD_BACKEND=SUBPROCESS_BACKEND, **(env or {}))
    for name in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_FD"):  # never inherit a launcher's
        environment.pop(name, None)
    process = subprocess.run(
        [mpiexec(), "-n", "2", sys.executable, str(SCRIPT), *map(str, args)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if check:
        assert process.returncode == 0, f"exit {process.returncode}\n{process.stdout}\n{process.stderr}"
    return process.returncode, process.stdout, process.stderr


def train_ranks(run_dir, *overrides, env=None, check=True, resume=False):
    return run_ranks("train", *train_args(run_dir, *overrides, resume=resume), env=env, check=check)


# ------------------------------------------------------------------------------------------------ sharding (no MPI)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=40), st.integers(1, 6))
def test_shards_are_contiguous_cover_the_batch_and_balance_tokens(weights, parts):
    bounds = shard_bounds(np.array(weights), parts)
    assert bounds[0] == 0 and bounds[-1] == len(weights) and np.all(np.diff(bounds) >= 0)
    sums = [sum(weights[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    # Each cut is at the row edge nearest its target: no share is off by more than a row on each side.
    assert max(sums) - sum(weights) / parts <= 2 * max(weights)


def test_shard_batch_rows_and_trimmed_padding():
    rng = np.random.default_rng(0)
    src = [rng.integers(4, 9, n) for n in (2, 3, 3, 9, 4)]
    tgt = [rng.integers(4, 9, n) for n in (3, 2, 4, 8, 1)]
    batch = collate(src, tgt)
    shares = [shard_batch(batch, 2, i) for i in range(2)]
    assert np.concatenate([s.indices for s in shares]).tolist() == batch.indices.tolist()
    for share in shares:
        assert share.src.shape == (len(share), share.src_lengths.max())
        assert share.tgt_out.shape == (len(share), share.tgt_lengths.max())
        rows = share.indices
        assert np.array_equal(share.tgt_out, batch.tgt_out[rows, : share.tgt_out.shape[1]])
    assert sum(s.num_tgt_tokens for s in shares) == batch.num_tgt_tokens
    one_row = collate(src[:1], tgt[:1])  # fewer rows than ranks: one share is empty
    assert sorted(shard_batch(one_row, 2, i) is None for i in range(2)) == [False, True]
    x = np.arange(15).reshape(5, 3)
    assert [len(shard_batch((x, x + 1), 2, i)[0]) for i in range(2)] in ([2, 3], [3, 2])


def test_launcher_detection():
    assert launched_ranks({}) == 1
    assert launched_ranks({"PMI_SIZE": "4"}) == 4
    assert launched_ranks({"OMPI_COMM_WORLD_SIZE": "3"}) == 3


def test_only_training_runs_on_several_ranks(monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")
    assert cli.main(["translate", "--checkpoint", "nowhere"]) == 2
    assert "translate runs in one process; only train and lm-train run on several MPI ranks" in capsys.readouterr().err


def test_a_multi_rank_launch_without_mpi4py_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails, as when it is not installed
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    assert cli.main(train_args(tmp_path / "run", "train.max_steps=1")) == 2
    err = capsys.readouterr().err
    assert "mpi4py" in err and "'dist' extra" in err and "2 MPI ranks" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ real ranks
def test_two_rank_gradient_is_the_single_process_gradient_of_the_joined_batch():
    assert run_ranks("gradient")[1].strip() == "ok"


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """A 2-rank run of STEPS steps, dropout on, a checkpoint after every step (each one checks the ranks hold
    bit-identical weights), validation at step 3 and the end; rank 1 refuses every file write."""
    run_dir = tmp_path_factory.mktemp("two_ranks")
    train_ranks(run_dir, f"train.max_steps={STEPS}", "train.validate_every=3", env={"DIST_TEST_READ_ONLY": "1"})
    return run_dir


def test_rank_zero_alone_writes_and_the_ranks_stay_in_step(two_rank_run):
    assert sorted(p.name for p in two_rank_run.iterdir()) == ["checkpoints", "config.json", "log.jsonl", "tokenizer"]
    records, train = train_records(two_rank_run)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))  # one record per step: one writer
    assert [r["step"] for r in records if r["type"] == "valid"] == [3, 6, STEPS]
    state = final_state(two_rank_run, STEPS)
    saved = json.loads((checkpoint_dir(two_rank_run, STEPS) / MANIFEST).read_text())
    assert saved["train_state"]["dist"]["ranks"] == 2 and set(saved["train_state"]["dist"]["generators"]) == {"0", "1"}
    assert state["train_state"]["step"] == STEPS


def test_two_rank_job_killed_then_resumed_is_bit_identical(two_rank_run, tmp_path):
    # The job holds after step 3 (its checkpoint written), is killed with SIGKILL as a whole, and resumed.
    environment = dict(os.environ, NPGRAD_BACKEND=SUBPROCESS_BACKEND, TRANSFORMER_HOLD_AT_STEP="3")
    args = train_args(tmp_path, "train.max_steps=1000", "train.validate_every=3")
    job = subprocess.Popen(
        [mpiexec(), "-n", "2", sys.executable, str(SCRIPT), "train", *map(str, args)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: mpiexec and both ranks
    )
    try:
        wait_for_steps(job, tmp_path, 3, timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while not checkpoint_dir(tmp_path, 3).is_dir() and time.monotonic() < deadline:
            time.sleep(0.01)  # (the log's record comes before the step's validation and checkpoint)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    assert checkpoint_dir(tmp_path, 3).is_dir() and not checkpoint_dir(tmp_path, 4).exists()
    train_ranks(tmp_path, f"train.max_steps={STEPS}", "train.validate_every=3", resume=True)
    assert_bit_identical(final_state(two_rank_run, STEPS), final_state(tmp_path, STEPS))
    assert [r["step"] for r in train_records(tmp_path)[1]] == list(range(1, STEPS + 1))


def test_a_rank_checkpoint_resumed_by_one_process_says_what_changes(two_rank_run, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(two_rank_run, run)
    with ng.use_backend(SUBPROCESS_BACKEND), caplog.at_level("WARNING"):
        run_cli(train_args(run, f"train.max_steps={STEPS + 1}", "train.validate_every=3", resume=True))
    said = [r.getMessage() for r in caplog.records if "MPI ranks" in r.getMessage()]
    assert len(said) == 1 and "saved by 2 MPI ranks" in said[0] and "mpiexec -n 2" in said[0]
    assert checkpoint_dir(run, STEPS + 1).is_dir()


def key_bias_rows(name, array):
    """The attention key biases: softmax is invariant to them, so their exact gradient is zero and a float32
    gradient is round-off alone, which Adam scales up to full-size steps in any run (its sign is noise)."""
    width = 16  # the tiny config's d_model
    mask = np.zeros(array.shape, dtype=bool)
    if name.endswith("qkv.bias"):
        mask[width : 2 * width] = True
    elif name.endswith("kv_proj.bias"):
        mask[:width] = True
    return mask


def test_two_ranks_end_with_the_weights_of_one_process(tmp_path):
    overrides = [f"train.max_steps={STEPS}", "model.dropout=0", "train.clip_norm=0.5", "train.accumulate=2"]
    train_ranks(tmp_path / "two", *overrides)
    with ng.use_backend(SUBPROCESS_BACKEND):
        cli.main([str(a) for a in train_args(tmp_path / "one", *overrides)])
    two, one = final_state(tmp_path / "two", STEPS)["weights"], final_state(tmp_path / "one", STEPS)["weights"]
    for name in one:
        keep = ~key_bias_rows(name, one[name])
        np.testing.assert_allclose(two[name][keep], one[name][keep], rtol=1e-5, atol=1e-6, err_msg=name)
    losses = [[r["loss"] for r in train_records(tmp_path / run)[1]] for run in ("two", "one")]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    code, _, err = train_ranks(tmp_path, "train.max_steps=50", env={"DIST_TEST_FAIL_AT": "2"}, check=False)
    assert code != 0
    assert "error (rank 1 of 2): rank 1 fails on purpose after step 2" in err


def test_a_rank_that_hangs_ends_the_job_after_the_timeout(tmp_path):
    env = {"DIST_TEST_HANG_AT": "2", "TRANSFORMER_DIST_TIMEOUT": "1"}
    code, _, err = train_ranks(tmp_path, "train.max_steps=50", env=env, check=False)
    assert code != 0
    assert "error (rank 0 of 2): no answer from the other ranks" in err and "TRANSFORMER_DIST_TIMEOUT" in err
