"""The training loop's guarantees, on a tiny config (tests/fixtures/tiny_config.toml on the 30-pair fixture).

- Exact resume: N steps in one go and N steps in two runs (stopped at k by the step budget, by ``kill -9``, or by
  Ctrl-C, then ``--resume``) end with bit-identical weights AND optimizer moments, with dropout on (so the RNG
  state matters) and with gradient accumulation.
- The JSON-lines log: one train record per step (also across a kill and a resume), every line valid JSON.
- The time budget stops training; Ctrl-C saves a checkpoint and exits with 130, SIGTERM likewise with 143.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import npgrad as ng

from transformer import cli
from transformer.checkpoint import MANIFEST, MODEL_FILE, OPTIMIZER_FILE

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_CONFIG = FIXTURES / "tiny_config.toml"
STEPS = 7  # N: the length of every compared run
# Validation only at the end of a run (a stopped run validates at its stop: that must not disturb the trajectory);
# a checkpoint after every step, so a kill at any step has a recent checkpoint to resume from.
COMMON = [
    "train.validate_every=100",
    "train.checkpoint_every=1",
    "train.keep_last=3",
    "train.log_every=100",
    "train.bleu_max_sentences=2",
]
# Training subprocesses use the NumPy kernels: loading the compiled Numba kernels would double their start-up time,
# and what they test (kill -9, Ctrl-C) is the loop's, not the kernels'. Their resumed runs use the same backend.
SUBPROCESS_BACKEND = "numpy"


def train_args(run_dir, *overrides, resume=False):
    args = [
        "train",
        "--config",
        str(TINY_CONFIG),
        "--run-dir",
        str(run_dir),
        f"data.src_path={FIXTURES / 'tiny.de'}",
        f"data.tgt_path={FIXTURES / 'tiny.en'}",
        *COMMON,
        *overrides,
    ]
    return args + ["--resume"] if resume else args


def run_cli(args):
    code = cli.main([str(a) for a in args])
    assert code == 0, f"transformer {' '.join(map(str, args))} exited with {code}"


def checkpoint_dir(run_dir, step):
    return Path(run_dir) / "checkpoints" / f"step-{step:09d}"


def final_state(run_dir, step):
    """Everything of checkpoint ``step`` that the trajectory determines (not wall time, not validation results)."""
    directory = checkpoint_dir(run_dir, step)
    assert directory.is_dir(), f"no checkpoint at step {step}: {sorted(p.name for p in directory.parent.iterdir())}"
    manifest = json.loads((directory / MANIFEST).read_text())
    train_state = manifest["train_state"]
    return {
        "weights": load_file(str(directory / MODEL_FILE)),
        "optimizer_arrays": load_file(str(directory / OPTIMIZER_FILE)),
        "optimizer": manifest["optimizer"],
        "scheduler": manifest["scheduler"],
        "rng_states": manifest["rng_states"],
        "train_state": {k: train_state[k] for k in ("step", "tokens", "data")},
    }


def assert_bit_identical(a, b):
    for kind in ("weights", "optimizer_arrays"):
        assert a[kind].keys() == b[kind].keys(), kind
        assert len(a[kind]) > 0
        for name in a[kind]:
            x, y = a[kind][name], b[kind][name]
            assert x.dtype == y.dtype and x.shape == y.shape, (kind, name)
            # Bytes, not values: -0.0 vs 0.0 or two different NaNs would be a difference too.
            assert x.tobytes() == y.tobytes(), f"{kind} {name}: max |diff| {np.max(np.abs(x - y)):.3g}"
    for kind in ("optimizer", "scheduler", "rng_states", "train_state"):
        assert a[kind] == b[kind], kind


def train_records(run_dir):
    records = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]
    return records, [r for r in records if r["type"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(accumulate, backend)``: the run directory of an uninterrupted run of STEPS steps, the trajectory
    every resumed run must reproduce (made on first use). Kernels differ in round-off between backends, so a run
    is only compared with a reference of its own backend (None: the default)."""
    runs = {}

    def get(accumulate=1, backend=None):
        key = (accumulate, backend)
        if key not in runs:
            run_dir = tmp_path_factory.mktemp(f"reference_acc{accumulate}_{backend or 'default'}")
            with backend_context(backend):
                run_cli(train_args(run_dir, f"train.max_steps={STEPS}", f"train.accumulate={accumulate}"))
            runs[key] = run_dir
        return runs[key]

    return get


def backend_context(backend):
    return ng.use_backend(backend) if backend else contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------ resume equality
@pytest.mark.parametrize("accumulate", [1, 2])
def test_stopped_and_resumed_run_is_bit_identical_to_uninterrupted(reference, tmp_path, accumulate):
    stop = 3  # mid-epoch: the data position, the dropout generator and Adam's moments all carry over
    run_cli(train_args(tmp_path, f"train.max_steps={stop}", f"train.accumulate={accumulate}"))
    assert checkpoint_dir(tmp_path, stop).is_dir()
    run_cli(train_args(tmp_path, f"train.max_steps={STEPS}", f"train.accumulate={accumulate}", resume=True))
    assert_bit_identical(final_state(reference(accumulate), STEPS), final_state(tmp_path, STEPS))
    # The per-step losses agree too, and each step is logged once.
    _, ours = train_records(tmp_path)
    _, theirs = train_records(reference(accumulate))
    assert [r["step"] for r in ours] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in ours] == [r["loss"] for r in theirs]


def test_resume_without_the_rng_states_would_differ(reference, tmp_path, monkeypatch):
    """The equality above can fail: dropout is on, so a resume that forgets the generators' state diverges."""
    from transformer.checkpoint import Checkpoint

    run_cli(train_args(tmp_path, "train.max_steps=3"))
    monkeypatch.setattr(Checkpoint, "restore_rng", lambda self, name, target: target)
    run_cli(train_args(tmp_path, f"train.max_steps={STEPS}", resume=True))
    ours, theirs = final_state(tmp_path, STEPS)["weights"], final_state(reference(1), STEPS)["weights"]
    assert any(ours[name].tobytes() != theirs[name].tobytes() for name in ours)


# ------------------------------------------------------------------------------------------------ real processes
def start_training(run_dir, *overrides, hold_at_step=0):
    # hold_at_step: the loop waits after that step until signalled, so the signal lands at a known step.
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        NPGRAD_BACKEND=SUBPROCESS_BACKEND,
        TRANSFORMER_HOLD_AT_STEP=str(hold_at_step),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "transformer", *train_args(run_dir, *overrides)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_steps(process, run_dir, steps, timeout=120.0):
    """Poll the JSON log until it holds ``steps`` train records (the process is still running)."""
    log = Path(run_dir) / "log.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and log.read_text().count('"type": "train"') >= steps:
            return
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"training ended (exit {process.returncode}) before step {steps}:\n{out}\n{err}")
        time.sleep(0.005)
    process.kill()
    pytest.fail(f"no step {steps} within {timeout} s")


def test_kill_9_then_resume_is_bit_identical(reference, tmp_path):
    # Long budget so the kill lands mid-run; the resumed run is cut back to STEPS by its own budget.
    process = start_training(tmp_path, "train.max_steps=1000", hold_at_step=3)
    wait_for_steps(process, tmp_path, 3)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    _, logged = train_records(tmp_path)
    killed_at = logged[-1]["step"]
    assert 3 <= killed_at < STEPS, f"killed at step {killed_at}; the test needs a kill before step {STEPS}"

    with ng.use_backend(SUBPROCESS_BACKEND):
        run_cli(train_args(tmp_path, f"train.max_steps={STEPS}", resume=True))
    assert_bit_identical(final_state(reference(1, SUBPROCESS_BACKEND), STEPS), final_state(tmp_path, STEPS))
    # The log written past the last checkpoint was replaced by the resumed run: still one record per step.
    records, train = train_records(tmp_path)
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    resumes = [r for r in records if r["type"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] in (killed_at - 1, killed_at)
    assert records.index(resumes[0]) == resumes[0]["step"]  # right after the last kept step's record
    # No half-written checkpoint is left behind.
    assert not [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "signum, code, stopped", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_ctrl_c_or_sigterm_saves_a_checkpoint_exits_and_resumes(reference, tmp_path, signum, code, stopped):
    # SIGTERM is what `timeout`, `kill` and job schedulers send: treated like Ctrl-C, it must not lose the run.
    process = start_training(tmp_path, "train.max_steps=1000", "train.checkpoint_every=1000", hold_at_step=2)
    wait_for_steps(process, tmp_path, 2)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped"] == stopped
    stopped_at = summary["step"]
    assert 2 <= stopped_at < STEPS
    # checkpoint_every is 1000: the only checkpoint is the one the signal wrote, at the step it stopped.
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [checkpoint_dir(tmp_path, stopped_at).name]

    with ng.use_backend(SUBPROCESS_BACKEND):
        run_cli(train_args(tmp_path, f"train.max_steps={STEPS}", resume=True))
    assert_bit_identical(final_state(reference(1, SUBPROCESS_BACKEND), STEPS), final_state(tmp_path, STEPS))


# ------------------------------------------------------------------------------------------------ log and budgets
def test_log_has_one_valid_train_record_per_step(reference):
    records, train = train_records(reference(2))
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    for r in train:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["lr"] > 0 and r["tokens"] > 0 and r["elapsed"] >= 0 and r["epoch"] >= 0
    assert [r["step"] for r in records if r["type"] == "valid"] == [STEPS]
    valid = records[-1]
    assert valid["type"] == "valid"
    assert valid["valid_ppl"] == pytest.approx(math.exp(valid["valid_loss"]))
    assert 0.0 <= valid["valid_bleu"] <= 100.0 and 0.0 <= valid["valid_chrf"] <= 100.0
    assert {r["type"] for r in records} == {"train", "valid"}


def test_time_budget_stops_training(tmp_path, capsys):
    # 0.00002 minutes is 1.2 ms: spent by the first step; a broken budget would run to the 1000 steps.
    run_cli(train_args(tmp_path, "train.max_minutes=0.00002", "train.max_steps=1000"))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["stopped"] == "max_minutes"
    assert 1 <= summary["step"] <= 3
    _, train = train_records(tmp_path)
    assert len(train) == summary["step"]
    assert checkpoint_dir(tmp_path, summary["step"]).is_dir()  # the budget's end saves like any other


def test_early_stopping_and_epoch_budget(tmp_path, capsys):
    # lr 0: validation BLEU never improves on the first validation, so patience 2 stops at the third.
    run_cli(
        train_args(
            tmp_path / "patience", "train.lr=0.0", "train.validate_every=1", "train.patience=2", "train.max_steps=50"
        )
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["stopped"], summary["step"]) == ("early_stopping", 3)
    # One epoch of the 22 training pairs is a few batches; the epoch budget stops after its last one.
    run_cli(train_args(tmp_path / "epoch", "train.max_epochs=1", "train.max_steps=50"))
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, train = train_records(tmp_path / "epoch")
    assert summary["stopped"] == "max_epochs" and 1 < summary["step"] < 50
    assert [r["epoch"] for r in train] == [0] * (summary["step"] - 1) + [1]  # the epoch after the step's batch
