"""``python -m transformer plot``: learning curves and gradient flow from real (tiny) runs' log.jsonl; a resumed run
is one curve; bad inputs are one-line errors naming the file and line."""

from __future__ import annotations

import json

import pytest

from test_cli import config_args, run
from test_lm import write_config

pytest.importorskip("matplotlib")

from transformer.plot import read_log  # noqa: E402  (after the skip: plot.py's figures need matplotlib)

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = ["train.validate_every=2", "train.log_every=2", "train.bleu_max_sentences=2", "train.keep_last=5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny translation runs: one straight to step 6, one stopped at 4 and resumed to 6."""
    root = tmp_path_factory.mktemp("plot")
    straight, resumed = root / "straight", root / "resumed"
    assert run_quiet("train", *config_args(straight, *STEPS, "train.max_steps=6")) == 0
    assert run_quiet("train", *config_args(resumed, *STEPS, "train.max_steps=4")) == 0
    assert run_quiet("train", *config_args(resumed, *STEPS, "train.max_steps=6"), "--resume") == 0
    return straight, resumed


def run_quiet(*args):
    from transformer import cli

    return cli.main([str(a) for a in args])


def is_plausible_png(path, smallest=10_000):
    data = path.read_bytes()
    return data.startswith(PNG) and smallest < len(data) < 400_000


def test_curves_of_two_runs_one_resumed(runs, tmp_path, capsys):
    straight, resumed = runs
    log = read_log(resumed)
    assert log.resumes == [4] and log.kind == "translation"
    assert [r["step"] for r in log.train] == list(range(1, 7))  # one continuous curve
    assert [r["step"] for r in log.valid] == [2, 4, 6]
    elapsed = [r["elapsed"] for r in log.train]
    assert elapsed == sorted(elapsed)  # the clock continues across the resume
    out = tmp_path / "curves.png"
    code, _, err = run(capsys, "plot", straight, resumed, "--output", out)
    assert code == 0, err
    assert is_plausible_png(out)
    code, _, err = run(capsys, "plot", straight, resumed, "--output", out)
    assert code == 2 and "exists; pass --overwrite" in err
    code, _, err = run(capsys, "plot", straight)  # default output: beside the log, replaced each time
    assert code == 0 and is_plausible_png(straight / "plot.png")


def test_gradient_flow_picture(runs, capsys):
    straight, resumed = runs
    code, _, err = run(capsys, "plot", "--gradients", straight, resumed)
    assert code == 0, err
    assert is_plausible_png(straight / "gradients.png")


def test_a_log_written_before_rewinding_is_one_curve(runs, tmp_path):
    """Records of steps a resume did again (an old log that was not rewound) are replaced by the new ones."""
    lines = (runs[0] / "log.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    stale = [dict(r, loss=99.0) for r in records if r["type"] == "train" and r["step"] in (5, 6)]
    upto4 = [r for r in records if r["step"] <= 4]
    later = [r for r in records if r["step"] > 4]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in upto4 + stale + later))
    log = read_log(tmp_path)
    assert [r["step"] for r in log.train] == list(range(1, 7))
    assert all(r["loss"] != 99.0 for r in log.train)


def test_bad_inputs_are_one_line_errors(runs, tmp_path, capsys):
    code, _, err = run(capsys, "plot", tmp_path)
    assert (
        code == 2
        and err.strip()
        == f"error: plot: {tmp_path} holds no log.jsonl: give a run directory (the --run-dir of a training)"
    )
    lines = (runs[0] / "log.jsonl").read_text().splitlines()
    (tmp_path / "log.jsonl").write_text("\n".join(lines[:3] + ['{"type": "train", "st'] + lines[3:]) + "\n")
    code, _, err = run(capsys, "plot", tmp_path, "--output", tmp_path / "x.png")
    assert code == 2 and f"{tmp_path / 'log.jsonl'}, line 4: not a log record" in err
    assert len(err.strip().splitlines()) == 1
    # a half-written last line (a run killed while writing) is skipped with a warning; a blank line likewise
    (tmp_path / "log.jsonl").write_text("\n".join(lines[:3] + [""] + lines[3:] + ['{"type": "tr']) + "\n")
    code, _, err = run(capsys, "plot", tmp_path, "--output", tmp_path / "x.png")
    assert code == 0 and "line 4: empty line" in err and f"line {len(lines) + 2}: an unfinished last record" in err
    # a complete last line that is not a record was not cut short by a kill: refused like any other line
    (tmp_path / "log.jsonl").write_text("\n".join(lines + ['{"type": "train", "loss": 1.0}']) + "\n")
    code, _, err = run(capsys, "plot", tmp_path, "--output", tmp_path / "x.png")
    assert code == 2 and f"line {len(lines) + 1}: not a log record (no step)" in err and "unfinished" not in err
    code, _, err = run(capsys, "plot", runs[0], "--output", tmp_path / "x.txt")
    assert code == 2 and "ending in .png, .svg, .pdf" in err
    code, _, err = run(capsys, "plot", runs[0], runs[0] / "log.jsonl", "--output", tmp_path / "y.png")
    assert code == 2 and "is the same run as" in err and not (tmp_path / "y.png").exists()


def test_a_run_without_gradient_records_and_mixed_kinds_are_refused(runs, tmp_path, capsys):
    old = tmp_path / "old"
    old.mkdir()
    lines = (runs[0] / "log.jsonl").read_text().splitlines()
    (old / "log.jsonl").write_text("".join(line + "\n" for line in lines if '"gradients"' not in line))
    code, _, err = run(capsys, "plot", "--gradients", old)
    assert code == 2 and "has no gradient-flow records" in err
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    config = write_config(tmp_path / "lm.toml", text, train={"max_steps": 6, "validate_every": 3})
    assert run_quiet("lm-train", "--config", config, "--run-dir", tmp_path / "lm") == 0
    code, _, err = run(capsys, "plot", runs[0], tmp_path / "lm")
    assert code == 2 and "is a translation run and lm a language-model run" in err
    code, _, err = run(capsys, "plot", tmp_path / "lm", "--output", tmp_path / "lm.png")
    assert code == 0 and is_plausible_png(tmp_path / "lm.png")
