"""Pictures of training runs, drawn from their log.jsonl: ``python -m transformer plot RUN [RUN ...]``.

Learning curves (the default): one row per quantity, against optimizer steps (left) and wall-clock minutes (right):
training loss (each step, faint, and a moving average), validation loss with perplexity on a second axis,
validation BLEU (solid) and chrF (dashed) for translation, learning rate, and training tokens per second. Every run
is one colour, named in the legend, so several recipes compare at a glance.

``--gradients``: gradient flow, from the ``gradients`` records the training loop writes every ``log_every`` steps
(transformer/gradflow.py): per run, a heat map of each layer's gradient norm and one of its update/weight ratio
(log10 scale; layers top to bottom in the model's order, steps left to right).

A resumed run is one continuous curve: its log was rewound to the checkpoint it resumed from, its ``elapsed``
continues the interrupted run's clock, and a record of a step the log already holds (a log written before the
rewinding existed) replaces the records from that step on, as the resume replaced those steps. Resumes are marked
by a dotted vertical line.

Runs of different kinds (translation and language modelling) are refused together: their validation numbers
measure different things (sub-word cross-entropy with BLEU, against per-character or per-token LM loss).
This module reads logs only; it imports no training code.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .console import log
from .extras import pyplot
from .files import write_atomic


class PlotError(ValueError):
    """A run or its log cannot be plotted (one line: which file, which line, what)."""


@dataclass
class RunLog:
    """One run's records by type, in step order, after the resume rule (module docstring)."""

    name: str
    path: Path
    train: list[dict] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    gradients: list[dict] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)

    @property
    def kind(self) -> str | None:
        """ "translation", "lm", or None when it has not validated yet."""
        for record in self.valid:
            if "valid_bleu" in record or "valid_loss" in record:
                return "translation"
            if "val_loss" in record:
                return "lm"
        return None


def log_path(run: str | Path) -> Path:
    """A run directory's log.jsonl (or the log file itself)."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.exists():
        raise PlotError(f"plot: {run} does not exist")
    path = run / "log.jsonl"
    if not path.is_file():
        raise PlotError(f"plot: {run} holds no log.jsonl: give a run directory (the --run-dir of a training)")
    return path


def read_log(run: str | Path, name: str | None = None) -> RunLog:
    """Parse a run's log. A line that is not a JSON object is an error naming the file and line, except the last
    line of the file, which a run killed (or still writing) may have left half-written (not valid JSON): that one is
    skipped with a warning, as --resume would drop it. Blank lines are skipped."""
    path = log_path(run)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    result = RunLog(name=name or Path(run).name, path=path)
    records: list[tuple[int, dict]] = []
    last_train_step = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            log.warning(f"{path}, line {number}: empty line (skipped)")
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
            step = int(record["step"])
        except (ValueError, KeyError, TypeError) as error:
            why = "no step" if isinstance(error, KeyError) else str(error).split("\n")[0]
            if number == len(lines) and isinstance(error, json.JSONDecodeError):  # (a complete line: not cut short)
                log.warning(f"{path}, line {number}: an unfinished last record (skipped): {why}")
                continue
            raise PlotError(f"{path}, line {number}: not a log record ({why}): {line[:80]!r}") from None
        kind = record.get("type")
        if kind == "resume":
            result.resumes.append(step)
            continue
        if kind == "train":
            if step <= last_train_step:  # a resumed run did these steps again: its records replace the old ones
                records = [(s, r) for s, r in records if s < step]
            last_train_step = step
        records.append((step, record))
    buckets = {"train": result.train, "valid": result.valid, "gradients": result.gradients}
    for _, record in records:
        bucket = buckets.get(str(record.get("type")))
        if bucket is not None:
            bucket.append(record)
    if not result.train:
        raise PlotError(f"plot: {path} has no training records yet")
    return result


def read_runs(runs: list[str]) -> list[RunLog]:
    """Every run's log, named by its directory (by its full path when two share a name); one kind only."""
    seen: dict[Path, str] = {}
    for r in runs:  # the same run twice would draw one curve over itself
        key = (Path(r) if Path(r).is_dir() else Path(r).parent).resolve()
        if key in seen:
            raise PlotError(f"plot: {r} is the same run as {seen[key]}; give each run once")
        seen[key] = str(r)
    names = [Path(r).name if Path(r).is_dir() else Path(r).parent.name for r in runs]
    logs = [read_log(r, n if names.count(n) == 1 else str(r)) for r, n in zip(runs, names)]
    kinds = {g.kind for g in logs if g.kind is not None}
    if len(kinds) > 1:
        by_kind = {k: next(g.name for g in logs if g.kind == k) for k in sorted(kinds)}
        raise PlotError(
            f"plot: {by_kind['translation']} is a translation run and {by_kind['lm']} a language-model run; their "
            "validation metrics measure different things: plot each kind in its own figure"
        )
    return logs


def _column(records: list[dict], key: str) -> np.ndarray:
    return np.array([r.get(key) if r.get(key) is not None else np.nan for r in records], dtype=float)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of the last ``window`` values at each point (fewer at the start), NaNs ignored."""
    if window <= 1 or values.size == 0:
        return values
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    sums[window:] = sums[window:] - sums[:-window]
    counts[window:] = counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _window(n: int) -> int:
    return max(1, n // 40)


def curves(logs: list[RunLog], output: Path) -> Path:
    """The learning-curves figure (module docstring) into ``output``."""
    plt = pyplot()
    kind = next((g.kind for g in logs if g.kind), None)
    rows = ["train loss", "validation loss"]
    if kind == "translation":
        rows.append("validation BLEU / chrF")
    rows += ["learning rate", "tokens / s"]
    figure, axes = plt.subplots(len(rows), 2, figsize=(11, 2.1 * len(rows) + 0.6), sharex="col", squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run in enumerate(logs):
        colour = colours[index % len(colours)]
        steps, minutes = _column(run.train, "step"), _column(run.train, "elapsed") / 60.0
        loss, window = _column(run.train, "loss"), _window(len(run.train))
        tokens = _column(run.train, "tokens")
        seconds = tokens / _column(run.train, "tok_per_s")
        speed = moving_average(tokens, window) / moving_average(seconds, window)
        v_steps, v_minutes = _column(run.valid, "step"), _column(run.valid, "elapsed") / 60.0
        v_loss = _column(run.valid, "valid_loss" if run.kind == "translation" else "val_loss")
        for column, (x, vx) in enumerate(((steps, v_steps), (minutes, v_minutes))):
            ax = axes[:, column]
            ax[0].plot(x, loss, color=colour, alpha=0.2, linewidth=0.6)
            ax[0].plot(x, moving_average(loss, window), color=colour, label=run.name if column == 0 else None)
            ax[1].plot(vx, v_loss, "o-", color=colour, markersize=3)
            if run.kind == "lm":  # the same estimate on training windows: the gap is the overfitting
                ax[1].plot(vx, _column(run.valid, "train_loss"), "--", color=colour, alpha=0.6, linewidth=1)
            row = 2
            if kind == "translation":
                ax[2].plot(vx, _column(run.valid, "valid_bleu"), "o-", color=colour, markersize=3)
                ax[2].plot(vx, _column(run.valid, "valid_chrf"), "s--", color=colour, markersize=2.5, alpha=0.7)
                row = 3
            ax[row].plot(x, _column(run.train, "lr"), color=colour)
            ax[row + 1].plot(x, speed, color=colour)
            if column == 0:
                for resumed in run.resumes:
                    for a in ax:
                        a.axvline(resumed, color=colour, linestyle=":", linewidth=0.8)
    for row, title in enumerate(rows):
        axes[row, 0].set_ylabel(title)
        for a in axes[row]:
            a.grid(True, alpha=0.3)
    with np.errstate(over="ignore"):
        axes[1, 1].secondary_yaxis("right", functions=(np.exp, _safe_log)).set_ylabel("perplexity")
    if kind == "lm":
        axes[1, 0].set_title("validation (solid) and training-window (dashed) loss", fontsize=8)
    if kind == "translation":
        axes[2, 0].set_title("BLEU (solid), chrF (dashed)", fontsize=8)
    axes[-1, 0].set_xlabel("step")
    axes[-1, 1].set_xlabel("wall-clock minutes")
    axes[0, 0].set_title("against optimizer steps")
    axes[0, 1].set_title("against wall-clock time")
    figure.legend(loc="upper center", ncol=min(4, len(logs)), frameon=False, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(plt, figure, output)


def _safe_log(values):
    return np.log(np.maximum(values, 1e-300))


def gradient_flow(logs: list[RunLog], output: Path) -> Path:
    """The gradient-flow figure (module docstring) into ``output``."""
    plt = pyplot()
    missing = [g for g in logs if not g.gradients]
    if missing:
        raise PlotError(
            f"plot --gradients: {missing[0].path} has no gradient-flow records (runs trained since gradient flow is "
            "logged write one every train.log_every steps)"
        )
    layer_counts = [len(g.gradients[-1]["grad_norm"]) for g in logs]
    height = sum(max(2.5, 0.16 * n + 1.2) for n in layer_counts)
    figure, axes = plt.subplots(len(logs), 2, figsize=(11, height), squeeze=False)
    colours = plt.get_cmap("viridis").copy()
    colours.set_bad("magenta")  # a non-finite norm
    for row, run in enumerate(logs):
        layers = list(dict.fromkeys(name for r in run.gradients for name in r["grad_norm"]))
        steps = [r["step"] for r in run.gradients]
        for column, (key, title) in enumerate(
            (("grad_norm", "gradient norm"), ("update_ratio", "update / weight norm"))
        ):
            table = np.array(
                [[_log10(r.get(key, {}).get(layer)) for r in run.gradients] for layer in layers], dtype=float
            )
            ax = axes[row, column]
            image = ax.imshow(
                np.ma.masked_invalid(table),
                aspect="auto",
                interpolation="nearest",
                cmap=colours,
                extent=(steps[0] - 0.5, steps[-1] + 0.5, len(layers) - 0.5, -0.5),
            )
            ax.set_yticks(range(len(layers)))
            ax.set_yticklabels(layers if column == 0 else [], fontsize=6)
            ax.set_title(f"{run.name}: log10 {title}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    figure.tight_layout()
    return _save(plt, figure, output)


def _log10(value) -> float:
    if value is None or not math.isfinite(value):
        return math.nan
    return math.log10(value) if value > 0 else -12.0  # a vanished gradient: the bottom of the colour scale


def _save(plt, figure, output: Path) -> Path:
    """Written atomically; a PNG with a 256-colour palette (line plots lose nothing visible; a third of the size)."""
    buffer = io.BytesIO()
    kind = output.suffix.lstrip(".").lower() or "png"
    figure.savefig(buffer, format=kind, dpi=80)
    plt.close(figure)
    data = buffer.getvalue()
    if kind == "png":
        from PIL import Image  # matplotlib's own dependency

        small = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").quantize(256).save(small, format="png", optimize=True)
        data = small.getvalue()
    return write_atomic(output, data)


FORMATS = (".png", ".svg", ".pdf")


def plot(runs: list[str], output: str | None = None, gradients: bool = False, overwrite: bool = False) -> Path:
    """Draw the runs' curves (or their gradient flow) into ``output`` (default: the first run's plot.png or
    gradients.png, replaced each time); an existing explicit ``output`` is replaced only with ``overwrite``."""
    logs = read_runs(runs)
    if output is None:
        first = logs[0].path.parent
        path = first / ("gradients.png" if gradients else "plot.png")
    else:
        path = Path(output)
        if path.suffix.lower() not in FORMATS:
            raise PlotError(f"--output {path}: give a file name ending in {', '.join(FORMATS)}")
        if path.is_dir():
            raise PlotError(f"--output {path} is a directory; give a file name")
        if path.exists() and not overwrite:
            raise PlotError(f"--output {path} exists; pass --overwrite to replace it")
    path = (gradient_flow if gradients else curves)(logs, path)
    log.info(f"wrote {path}")
    return path
