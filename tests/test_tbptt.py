"""Truncated backpropagation through time for recurrent LMs (``data.batching = "stream"``): the stream batcher reads
contiguous sub-streams and wraps, the training step carries the detached state between segments (and the carried
state matters), resuming is bit-exact with the state saved in the checkpoint, and the carried-state evaluation
equals one forward pass over the whole split.

Legend: B batch, T window (block_size), V vocabulary.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from npgrad import functional as F
from transformer import cli
from transformer.checkpoint import load_checkpoint
from transformer.config import ConfigError
from transformer.data import LMStreamBatcher
from transformer.model import LanguageModel, LMConfig
from transformer.rnn import RecurrentLM, RecurrentLMConfig
from transformer.tasks import LMTask, lm_split_loss
from transformer.train import train_settings

from test_lm import TINY_TRAIN, corpus_text, read_log, toml_value

LSTM = dict(kind="lstm", d_model=16, d_hidden=16, n_layers=2, block_size=16, dropout=0.0, tie_output=True)


def test_stream_batcher_reads_contiguous_substreams_and_wraps():
    data = np.arange(103) * 7 % 101  # distinct values, not sorted
    batcher = LMStreamBatcher(data, block_size=5, batch_size=4)
    streams = data[:100].reshape(4, 25)  # (B, n // B) the last 3 tokens unused
    segments = [batcher.sample() for _ in range(5)]  # 24 inputs per row: 5 + 5 + 5 + 5 + 4
    assert [s.first for s in segments] == [True, False, False, False, False]
    assert [s.x.shape for s in segments] == [(4, 5)] * 4 + [(4, 4)]
    for before, after in zip(segments, segments[1:]):
        assert np.array_equal(after.x[:, 0], before.y[:, -1])  # each row continues where it stopped
    np.testing.assert_array_equal(np.concatenate([s.x for s in segments], axis=1), streams[:, :-1])
    np.testing.assert_array_equal(np.concatenate([s.y for s in segments], axis=1), streams[:, 1:])
    assert batcher.state_dict() == {"position": 0, "passes": 1}
    again = batcher.sample()  # the second pass starts over, flagged so that the state restarts from zero
    assert again.first and np.array_equal(again.x, segments[0].x)
    restored = LMStreamBatcher(data, block_size=5, batch_size=4)
    restored.load_state_dict(batcher.state_dict())
    for _ in range(6):
        a, b = batcher.sample(), restored.sample()
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and a.first == b.first
    with pytest.raises(ValueError, match="the train split has 7 tokens: cut into batch_size=4 sub-streams"):
        LMStreamBatcher(data[:7], block_size=5, batch_size=4)
    with pytest.raises(ValueError, match="saved stream position 30 is outside"):
        restored.load_state_dict({"position": 30, "passes": 0})


def _task(tmp_path, model=LSTM, **data):
    path = tmp_path / "corpus.txt"
    path.write_text(corpus_text(40))
    config = {
        "data": {"text_path": str(path), "batching": "stream", **data},
        "tokenizer": {"kind": "char"},
        "model": dict(model),
    }
    return LMTask(config, tmp_path / "run", train_settings(dict(TINY_TRAIN)))


def test_the_training_step_carries_the_state_and_restarts_it_with_each_pass(tmp_path):
    task = _task(tmp_path)
    model = task.model
    first, second = task.next_batch(), task.next_batch()
    assert first.first and not second.first and task.carried is None
    task.loss(model, first)
    carried = task.carried
    assert all(isinstance(s, np.ndarray) and s.shape == (2, 8, 16) for s in carried)  # (h, c): no graph kept
    with_state = float(task.loss(model, second).data)
    task.carried = None
    from_zero = float(task.loss(model, second).data)
    assert abs(with_state - from_zero) > 1e-4  # the carried state is what the model read
    task.carried = carried
    restart = first._replace(x=second.x, y=second.y)  # a pass's first segment ignores what was carried
    assert float(task.loss(model, restart).data) == from_zero
    # A teacher, or validation's model, reads from zero and leaves the training state alone.
    task.carried = carried
    assert float(task.loss(RecurrentLM(model.config), second).data) == pytest.approx(from_zero)
    assert task.carried is carried
    while not task.next_batch().first:  # the epoch counts passes
        pass
    assert task.epoch == 1


def test_stream_batching_is_refused_for_models_without_a_state_and_unknown_values(tmp_path):
    with pytest.raises(ConfigError, match=r'batching = "stream" carries a recurrent state.*the transformer LM'):
        _task(tmp_path, dict(d_model=16, n_heads=2, n_layers=1, block_size=16))
    with pytest.raises(ConfigError, match=r"\[data\] batching must be one of windows, stream, got 'bptt'"):
        _task(tmp_path, batching="bptt")


def test_lm_train_in_stream_mode_resumes_exactly_with_the_carried_state(tmp_path):
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(corpus_text(30))  # ~670 training characters: 83 columns of 8 rows, a pass of 6 segments
    train = dict(max_steps=8, lr_schedule="constant", validate_every=4, eval_iters=1, lr=3e-2, optimizer="adam")
    model = {**LSTM, "dropout": 0.1}  # the dropout generators are resumed too
    sections = {
        "data": {"text_path": str(text_path), "train_fraction": 0.9, "batching": "stream"},
        "tokenizer": {"kind": "char"},
        "model": model,
        "train": {**TINY_TRAIN, **train},
    }
    config = tmp_path / "c.toml"
    config.write_text(
        "".join(f"[{n}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in d.items()) for n, d in sections.items())
    )
    for name, stops in (("straight", [8]), ("resumed", [4, 8])):
        for i, stop in enumerate(stops):
            args = ["lm-train", "--config", config, "--run-dir", tmp_path / name, f"train.max_steps={stop}"]
            assert cli.main([str(a) for a in args] + (["--resume"] if i else [])) == 0
    halfway = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "step-000000004")
    saved = halfway.train_state["data"]
    assert saved["stream"] == {"position": 64, "passes": 0}
    assert [s.shape for s in saved["carried"]] == [(2, 8, 16), (2, 8, 16)]
    manifest = json.loads((halfway.directory / "checkpoint.json").read_text())
    assert "__tensor__" in json.dumps(manifest["train_state"])  # the arrays are in optimizer.safetensors
    ends = {
        name: load_checkpoint(tmp_path / name / "checkpoints" / "step-000000008") for name in ("straight", "resumed")
    }
    assert ends["straight"].train_state["data"]["stream"] == {"position": 32, "passes": 1}  # it wrapped at step 6
    for key, value in ends["straight"].model_state.items():
        assert value.tobytes() == ends["resumed"].model_state[key].tobytes(), key
    logs = {name: [r for r in read_log(tmp_path / name) if r["type"] in ("train", "valid")] for name in ends}
    assert [r["step"] for r in logs["resumed"]] == [r["step"] for r in logs["straight"]]
    for a, b in zip(logs["straight"], logs["resumed"]):
        assert {k: v for k, v in a.items() if k not in ("tok_per_s", "elapsed", "seconds")} == {
            k: v for k, v in b.items() if k not in ("tok_per_s", "elapsed", "seconds")
        }
    assert cli.main(["lm-eval", "--checkpoint", str(tmp_path / "straight")]) == 0


def test_carried_state_evaluation_equals_one_forward_pass_over_the_split():
    config = RecurrentLMConfig(vocab_size=11, d_model=6, d_hidden=6, n_layers=2, tie_output=True, dtype="float64")
    model = RecurrentLM(config).eval()
    ids = np.random.default_rng(0).integers(0, 11, 50)
    logits = model(ids[None, :-1])  # (1, 49, V)
    whole = float(F.cross_entropy(logits.reshape(-1, 11), ids[1:]).data)
    assert lm_split_loss(model, ids, 7, streams=1) == (pytest.approx(whole, rel=1e-12), 49)
    assert lm_split_loss(model, ids, 7)[0] != pytest.approx(whole, rel=1e-6)  # windows from zero differ
    # Four sub-streams of 13 targets (the last of 10), each read from its first token.
    total = 0.0
    for start in range(0, 49, 13):
        row = ids[start : min(start + 13, 49) + 1]
        total += float(F.cross_entropy(model(row[None, :-1]).reshape(-1, 11), row[1:], reduction="sum").data)
    assert lm_split_loss(model, ids, 5, streams=4) == (pytest.approx(total / 49, rel=1e-12), 49)
    transformer = LanguageModel(LMConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=1, block_size=8))
    with pytest.raises(ValueError, match="needs a recurrent LM, not a LanguageModel"):
        lm_split_loss(transformer, ids, 8, streams=1)


def test_road_benchmark_trains_the_lstm_by_truncated_bptt(tmp_path, capsys):
    from benchmarks import road

    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text(corpus_text(300))
    args = ["--corpus", "shakespeare", "--steps", "2", "--eval-tokens", "300", "--data-dir", str(tmp_path)]
    assert road.main(args + ["--models", "lstm", "--stream"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["batching"] == "stream" and row["tokens_seen"] == 2 * 12 * 64
    assert 1.0 < row["valid_ppl"] < 100 and 1.0 < row["test_ppl"] < 100
