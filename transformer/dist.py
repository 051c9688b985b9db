"""Synchronous data-parallel training on MPI: ``mpiexec -n K python -m transformer train ...``.

Every rank builds the same model from the same seed and reads the same stream of global batches (the batches one
process would train on: the data order is a pure function of the seed). Each rank takes its share of the rows of each
global batch (``shard_batch``: contiguous rows cut where the ranks' source + target token counts are as equal as
possible), computes the summed loss of its rows divided by the GLOBAL target-token count, and backpropagates. One
in-place ``Allreduce`` of a single flat buffer (every gradient, then one has-a-gradient flag per parameter, then the
loss) sums the ranks' contributions: each parameter's gradient is then the one a single process computes on the whole
batch (up to the order of float32 additions), so label smoothing, gradient clipping on the global norm and the Adam
update are the single process's, and every rank applies the identical update.

Rank 0 alone writes (the log, the checkpoints, config.json, a new tokenizer); every rank resumes from the same
checkpoint. Validation runs once, on rank 0, and its metrics are broadcast so every rank takes the same
best-checkpoint and early-stopping decisions. Dropout draws from a generator of each rank's own (rank 0's is the
single process's; rank r's is derived from it and r), so the ranks' masks are independent; rank 0 saves every
rank's generator state in the checkpoint (``train_state["dist"]``), so ``--resume`` with the same K is bit-exact.

Checks that the ranks stay in step: before training, a digest of the configuration, the encoded training data, the
vocabulary and the initial weights is compared across ranks (a ``ConfigError`` names what differs); after every
checkpoint, a hash of the weights and optimizer moments. The stop decision (a signal, the time budget: clocks and
signal arrival differ between ranks) is agreed by a one-number allreduce at the top of each step, so every rank stops
after the same step. A rank that raises prints its message and calls ``MPI_Abort``, which ends the whole job; MPI
errors raise (errors-return mode) instead of aborting silently; and a watchdog thread aborts the job with a message
when a collective waits longer than ``TRANSFORMER_DIST_TIMEOUT`` seconds (a rank that hangs or left the protocol).

This is the only module that imports mpi4py, and only when the command was started as several ranks
(``launched_ranks``, from the launcher's environment): a single process never needs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn, TypeVar

import numpy as np

from .config import ConfigError
from .console import log
from .extras import require

T = TypeVar("T")

# What MPI launchers put in each rank's environment: MPICH / Intel MPI (hydra, PMI), Open MPI, MVAPICH, PMIx.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
TIMEOUT_VARIABLE = "TRANSFORMER_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 900.0  # seconds a collective may wait: a step takes seconds, this only catches a hang
# Waiting for rank 0's validation (whole-set decoding, BLEU) and checkpoint may take this many times longer.
ROOT_WORK_FACTOR = 4
# The stop reasons of Trainer._budget_reason, by precedence: the ranks stop for the highest any of them has.
STOP_REASONS = (None, "max_steps", "max_epochs", "max_minutes", "interrupted", "terminated")
# Errors that are the user's to fix: one line, no traceback (as the CLI prints them).
USER_ERRORS = (ValueError, OSError, FloatingPointError, MemoryError, ImportError)
# Seconds an aborting rank waits after printing its message, so that the launcher forwards it before killing the job.
ABORT_GRACE_SECONDS = 1.0


def launched_ranks(environ: Mapping[str, str] | None = None) -> int:
    """How many processes the MPI launcher started for this job (1 when it was not started by one)."""
    variables = os.environ if environ is None else environ
    for name in SIZE_VARIABLES:
        value = variables.get(name, "")
        if value.strip().isdigit():
            return int(value)
    return 1


def timeout_setting(environ: Mapping[str, str] | None = None) -> float:
    variables = os.environ if environ is None else environ
    text = variables.get(TIMEOUT_VARIABLE, "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r}: give the seconds a collective may wait, a number > 0")
    return value


def connect(feature: str = "training on several processes") -> DataParallel | None:
    """The job's ranks when the command was started by an MPI launcher with several processes, else None (one
    process: mpi4py is not imported). Raises MissingExtra (install the 'dist' extra) when mpi4py is missing."""
    size = launched_ranks()
    if size <= 1:
        return None
    timeout = timeout_setting()
    MPI = require("mpi4py.MPI", "dist", f"{feature} (this command was started as {size} MPI ranks)")
    comm = MPI.COMM_WORLD
    # MPI errors raise mpi4py's MPI.Exception (caught, printed, then the job aborted) instead of killing silently.
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    if comm.Get_size() != size:
        raise RuntimeError(
            f"the launcher started {size} processes but MPI sees {comm.Get_size()}: this mpiexec belongs to another "
            f"MPI than mpi4py's ({MPI.Get_library_version().splitlines()[0].strip()}); launch with that MPI's mpiexec "
            f"(pip's mpich installs it as {os.path.join(sys.prefix, 'bin', 'mpiexec')})"
        )
    return DataParallel(comm, MPI, timeout)


# ============================================================================================= sharding
def shard_bounds(weights: np.ndarray, parts: int) -> np.ndarray:
    """(parts + 1,) row boundaries cutting rows of ``weights`` (N,) into ``parts`` contiguous groups whose weight sums
    are as equal as the rows allow: boundary k is the row edge nearest to k/parts of the total (groups may be empty
    when there are fewer rows than parts)."""
    edges = np.concatenate([[0.0], np.cumsum(np.asarray(weights, dtype=np.float64))])  # (N + 1,)
    targets = edges[-1] * np.arange(1, parts) / parts
    after = np.clip(np.searchsorted(edges, targets), 1, len(edges) - 1)
    nearer = np.where(targets - edges[after - 1] <= edges[after] - targets, after - 1, after)
    return np.concatenate([[0], np.maximum.accumulate(nearer), [len(edges) - 1]]).astype(np.int64)


def shard_batch(batch: Any, parts: int, index: int) -> Any:
    """Share ``index`` of ``parts`` of a global batch, or None when it gets no rows. A translation ``Batch``: its
    rows cut so the shares' source + target tokens balance (rows of a batch have similar lengths: each share keeps
    few padding columns, and its padding is trimmed to its own longest row); a language-model batch (x (B, L),
    y (B, L)): whole windows, as evenly as possible."""
    if isinstance(batch, tuple):
        x, y = batch
        bounds = shard_bounds(np.ones(len(x)), parts)
        start, stop = bounds[index], bounds[index + 1]
        return (x[start:stop], y[start:stop]) if stop > start else None
    bounds = shard_bounds(batch.src_lengths + batch.tgt_lengths, parts)
    rows = slice(int(bounds[index]), int(bounds[index + 1]))
    if rows.stop <= rows.start:
        return None
    S, T = int(batch.src_lengths[rows].max()), int(batch.tgt_lengths[rows].max())
    return dataclasses.replace(
        batch,
        src=batch.src[rows, :S],
        tgt_in=batch.tgt_in[rows, :T],
        tgt_out=batch.tgt_out[rows, :T],
        src_lengths=batch.src_lengths[rows],
        tgt_lengths=batch.tgt_lengths[rows],
        indices=batch.indices[rows],
    )


# ============================================================================================= digests
def digest_arrays(arrays) -> str:
    """SHA-256 over the arrays' dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data)
    return h.hexdigest()


def run_digests(task, settings: dict) -> dict[str, str]:
    """What every rank must agree on before training: name -> digest."""
    config = getattr(task, "config", None) or {}
    data = getattr(task, "train_set", None)
    if data is not None:  # translation: the encoded training pairs
        training = digest_arrays([*data.src_ids, *data.tgt_ids])
    else:  # a language model: the token stream
        training = digest_arrays([task.train_ids])
    vocabulary = hashlib.sha256()
    for name, path in sorted(task.extra_files().items()):
        vocabulary.update(name.encode() + b"\0" + open(path, "rb").read())
    return {
        "the configuration": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "the training settings": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest(),
        "the vocabulary (tokenizer files)": vocabulary.hexdigest(),
        "the training data (as token ids)": training,
        "the initial weights": digest_arrays(p.data for p in task.model.parameters()),
    }


def training_state_digest(model, optimizer) -> str:
    """The weights and the optimizer's moments and step counts: what must be equal on every rank after each step."""
    arrays = [p.data for p in model.parameters()]
    arrays += [state[key] for state in optimizer.state for key in sorted(state)]
    arrays.append(np.asarray(optimizer.param_steps, dtype=np.int64))
    return digest_arrays(arrays)


def seed_rank_generators(model, rank: int) -> None:
    """Rank r > 0: each dropout generator restarted from a stream derived from its current state and r, so the
    ranks' masks are independent (rank 0 keeps the single process's stream)."""
    if rank == 0:
        return
    for _, rng in model.named_generators():
        entropy = int(np.random.Generator(_copy_bit_generator(rng.bit_generator)).integers(2**63))
        fresh = type(rng.bit_generator)(np.random.SeedSequence(entropy, spawn_key=(rank,)))
        rng.bit_generator.state = fresh.state


def _copy_bit_generator(bit_generator):
    copy = type(bit_generator)()
    copy.state = bit_generator.state
    return copy


# ============================================================================================= the ranks
class _Watchdog:
    """A daemon thread that ends the job when a collective waits past its deadline (mpi4py releases the GIL while
    it blocks in MPI, so the thread runs)."""

    def __init__(self, abort: Callable[[str], None]):
        self.abort = abort
        self.what: str | None = None
        self.deadline: float | None = None
        self.timeout = 0.0
        threading.Thread(target=self._watch, name="dist-watchdog", daemon=True).start()

    @contextlib.contextmanager
    def waiting(self, what: str, timeout: float) -> Iterator[None]:
        self.what, self.timeout, self.deadline = what, timeout, time.monotonic() + timeout
        try:
            yield
        finally:
            self.deadline = None

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.abort(
                    f"no answer from the other ranks for {self.timeout:.0f} s in {self.what}: a rank hangs or "
                    f"left the job; ending it ({TIMEOUT_VARIABLE} sets the limit)"
                )


class DataParallel:
    """This process's place among the job's ranks, and the collectives the training loop uses (see the module
    docstring). ``seconds_in_allreduce`` / ``allreduces`` / ``bytes_per_allreduce`` measure the communication."""

    def __init__(self, comm, MPI, timeout: float = DEFAULT_TIMEOUT):
        self.comm, self.MPI, self.timeout = comm, MPI, float(timeout)
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        self._buffer: np.ndarray | None = None
        self._stop = np.zeros(1, dtype=np.int64)
        self.seconds_in_allreduce, self.allreduces, self.bytes_per_allreduce = 0.0, 0, 0
        self._watchdog = _Watchdog(self.abort)

    def __repr__(self) -> str:
        return f"DataParallel(rank {self.rank} of {self.size})"

    # ------------------------------------------------------------------ running the job
    def run(self, main: Callable[[], T]) -> T:
        """Run ``main`` on this rank; if it raises, say why and end the whole job (no rank is left waiting). Ranks
        other than 0 log errors only (one copy of every message, from rank 0)."""
        if not self.is_root:
            log.setLevel("ERROR")
        try:
            return main()
        except SystemExit as done:
            if done.code in (None, 0):
                raise
            self.abort(f"exit status {done.code}", code=int(done.code) if isinstance(done.code, int) else 1)
        except KeyboardInterrupt:  # a second Ctrl-C (the first one stops every rank cleanly after the step)
            self.abort("interrupted", code=130)
        except BaseException as error:  # noqa: BLE001 - every failure must end the job, not leave it hanging
            user = isinstance(error, USER_ERRORS) and not isinstance(error, self.MPI.Exception)
            if not self.is_root:
                time.sleep(0.5)  # an error every rank meets is said once, by rank 0, whose abort ends this one
            self.abort(str(error) or type(error).__name__, None if user else traceback.format_exc(), 2 if user else 1)

    def abort(self, message: str, details: str | None = None, code: int = 1) -> NoReturn:
        """Print ``message`` (and ``details``, a traceback) naming this rank, then end every rank of the job."""
        sys.stderr.write((details or "") + f"error (rank {self.rank} of {self.size}): {message}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        # The launcher forwards this rank's output through a pipe it reads on its own time, and Abort has it kill
        # every process: give it a moment to pass the message on first (without this a loaded machine lost it).
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(code)
        # MPICH's Abort asks the launcher to end the job and returns; the launcher kills this process within moments.
        time.sleep(10.0)
        os._exit(code)

    def first_on_root(self, step: Callable[[], T]) -> T:
        """``step`` on rank 0, then on the others: a step that creates files (a tokenizer, a directory, a cached
        download) the first time and only reads them afterwards runs its writing part once."""
        if self.is_root:
            result = step()
        self._idle(self.comm.Ibarrier(), "waiting for rank 0 to prepare the run", ROOT_WORK_FACTOR)
        if not self.is_root:
            result = step()
        return result

    @contextlib.contextmanager
    def _waiting(self, what: str, factor: float = 1.0) -> Iterator[None]:
        with self._watchdog.waiting(what, self.timeout * factor):
            yield

    def _idle(self, request, what: str, factor: float = 1.0) -> None:
        """Wait for a non-blocking collective, sleeping between tests: MPICH's blocking calls spin, and a rank waiting
        for the others (a slower shard, rank 0 validating) should leave the CPU to them."""
        with self._waiting(what, factor):
            while not request.Test():
                time.sleep(0.0002)

    def log_summary(self, elapsed: float) -> None:
        """Rank 0: what the communication cost this run."""
        if self.allreduces:
            log.info(
                f"data-parallel: {self.size} ranks, {self.allreduces} gradient allreduces of "
                f"{self.bytes_per_allreduce / 1e6:.3g} MB, {self.seconds_in_allreduce:.3g} s in them "
                f"({100 * self.seconds_in_allreduce / max(elapsed, 1e-9):.1f}% of the training time)"
            )

    # ------------------------------------------------------------------ agreement
    def check_same_run(self, task, settings: dict) -> None:
        """Refuse to train unless every rank has the same configuration, data, vocabulary and initial weights."""
        mine = run_digests(task, settings)
        with self._waiting("comparing the ranks' runs"):
            everyone = self.comm.allgather(mine)
        for name in mine:
            ranks = [r for r, digests in enumerate(everyone) if digests[name] != everyone[0][name]]
            if ranks:
                raise ConfigError(
                    f"the ranks disagree on {name}: rank{'s' if len(ranks) > 1 else ''} "
                    f"{', '.join(map(str, ranks))} differ{'' if len(ranks) > 1 else 's'} from rank 0; every rank must "
                    "run the same command on the same files (a shared or identical run directory and data)"
                )
        log.info(f"data-parallel: {self.size} ranks agree on the configuration, data, vocabulary and weights")

    def agree_stop(self, reason: str | None) -> str | None:
        """The stop reason every rank uses: the strongest any rank has (a signal reaches the ranks at different
        steps, and their clocks differ), so all stop after the same step."""
        self._stop[0] = STOP_REASONS.index(reason)
        self._idle(self.comm.Iallreduce(self.MPI.IN_PLACE, self._stop, op=self.MPI.MAX), "agreeing whether to stop")
        return STOP_REASONS[int(self._stop[0])]

    def check_in_step(self, model, optimizer, step: int) -> None:
        """After a checkpoint: the weights and optimizer state must be bit-identical on every rank."""
        mine = training_state_digest(model, optimizer)
        with self._waiting("comparing the ranks' weights"):
            everyone = self.comm.allgather(mine)
        differ = [r for r, digest in enumerate(everyone) if digest != everyone[0]]
        if differ:
            raise RuntimeError(
                f"the ranks are out of step at step {step}: the weights or optimizer state of rank(s) "
                f"{', '.join(map(str, differ))} differ from rank 0's; the last checkpoint was written before this "
                "check, resume from the one before it"
            )

    # ------------------------------------------------------------------ the step
    def seed_generators(self, model) -> None:
        """This rank's own dropout streams (``seed_rank_generators``)."""
        seed_rank_generators(model, self.rank)

    def shard(self, batch: Any) -> Any:
        """This rank's share of a global batch (None: no rows for it)."""
        return shard_batch(batch, self.size, self.rank)

    def all_reduce_gradients(self, params, loss_sum: float) -> float:
        """Sum every rank's gradients of ``params`` in one in-place Allreduce of a flat buffer, set each parameter's
        ``.grad`` to its slice of the sum (None where no rank has a gradient, as one process would have), and return
        the sum of the ranks' ``loss_sum``."""
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) != 1:
            raise TypeError(f"data-parallel training needs parameters of one dtype, got {sorted(map(str, dtypes))}")
        sizes = [p.data.size for p in params]
        total = sum(sizes)
        if (
            self._buffer is None
            or self._buffer.size != total + len(params) + 1
            or self._buffer.dtype != params[0].data.dtype
        ):
            # (gradients..., one flag per parameter, the loss); kept between steps: one allocation per run
            self._buffer = np.empty(total + len(params) + 1, dtype=params[0].data.dtype)
            self.bytes_per_allreduce = self._buffer.nbytes
        buffer, offset = self._buffer, 0
        flags = buffer[total : total + len(params)]
        for i, (p, n) in enumerate(zip(params, sizes)):
            grad = p.grad if p.grad is None or isinstance(p.grad, np.ndarray) else p.grad.data  # (a Tensor's array)
            if grad is None:
                buffer[offset : offset + n] = 0
                flags[i] = 0
            else:
                buffer[offset : offset + n] = np.ravel(grad)
                flags[i] = 1
            offset += n
        buffer[-1] = loss_sum
        self._idle(self.comm.Ibarrier(), "waiting for the other ranks' gradients")  # (then all are there)
        t0 = time.perf_counter()
        with self._waiting("the gradient allreduce"):
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self.seconds_in_allreduce += time.perf_counter() - t0
        self.allreduces += 1
        offset = 0
        for i, (p, n) in enumerate(zip(params, sizes)):
            p.grad = buffer[offset : offset + n].reshape(p.data.shape) if flags[i] > 0 else None
            offset += n
        return float(buffer[-1])

    # ------------------------------------------------------------------ validation and checkpoints
    def from_root(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0 only (validation), its result given to every rank."""
        result = compute() if self.is_root else None
        self._idle(self.comm.Ibarrier(), "waiting for rank 0's validation", ROOT_WORK_FACTOR)
        with self._waiting("receiving rank 0's validation"):
            return self.comm.bcast(result, root=0)

    def before_save(self, trainer) -> dict | None:
        """Every rank at a checkpoint: check that the ranks are in step, and give rank 0 what it saves besides its own
        state (every rank's dropout generators). Returns the ``train_state["dist"]`` entry on rank 0, None on the
        others (they write nothing)."""
        self.check_in_step(trainer.model, trainer.optimizer, trainer.state["step"])
        mine = {name: rng.bit_generator.state for name, rng in trainer.model.named_generators()}
        with self._waiting("gathering the ranks' generators"):
            everyone = self.comm.gather(mine, root=0)
        if not self.is_root:
            return None
        return {"ranks": self.size, "generators": {str(r): states for r, states in enumerate(everyone)}}

    def resume(self, trainer, saved: dict | None) -> None:
        """After the Trainer restored a checkpoint (rank 0's generators everywhere): this rank's own generators, as
        saved (``before_save``); without them (another K, or a single-process checkpoint) derived afresh."""
        saved = saved or {}
        if saved.get("ranks", 1) != self.size:
            log.info(
                f"resuming a run saved by {saved.get('ranks', 1)} process(es) on {self.size}: the same global "
                "batches, other dropout masks (a bit-exact resume needs the same number of ranks)"
            )
        states = (saved.get("generators") or {}).get(str(self.rank))
        if states is None:
            seed_rank_generators(trainer.model, self.rank)
            return
        for name, rng in trainer.model.named_generators():
            rng.bit_generator.state = states[name]
