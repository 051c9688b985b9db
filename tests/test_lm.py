"""Language modelling end to end: lm-train on a tiny corpus (its loss falls), lm-sample (a fixed seed
reproduces the text; the KV cache changes nothing), lm-eval (perplexity = exp of the mean token loss
recomputed here with a NumPy log-softmax; bits per character; the Kneser-Ney baseline on the same tokens),
and the clear errors: empty or one-character corpus, block size larger than a split, a prompt character
outside the vocabulary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from transformer import cli
from transformer.config import ConfigError, load_config
from transformer.data import split_stream
from transformer.model import LanguageModel, LMConfig
from transformer.tasks import LMTask, encode_prompt, lm_generate, lm_split_loss
from transformer.tokenizer import CharTokenizer
from transformer.train import build_optimizer, train_settings

LINES = [
    "the cat sat on the mat.",
    "a dog ran in the fog.",
    "we see the sea and the tree.",
    "to be or not to be, that is it.",
    "my hat is on the cat.",
]
TINY_MODEL = dict(d_model=32, n_heads=2, n_layers=2, block_size=16, dropout=0.0, bias=False)
TINY_TRAIN = dict(
    optimizer="adamw",
    lr=1e-2,
    min_lr=1e-3,
    lr_schedule="cosine",
    warmup_steps=5,
    betas=[0.9, 0.99],
    eps=1e-8,
    weight_decay=0.1,
    label_smoothing=0.0,
    clip_norm=1.0,
    batch_size=8,
    max_steps=60,
    validate_every=30,
    eval_iters=4,
    log_every=20,
    seed=3,
)


def corpus_text(n_lines=120, seed=0):
    rng = np.random.default_rng(seed)
    return "\n".join(LINES[i] for i in rng.integers(0, len(LINES), n_lines)) + "\n"


def toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, text_path: Path, model=None, train=None, tokenizer=None):
    sections = {
        "data": {"text_path": str(text_path), "train_fraction": 0.9},
        "tokenizer": {"kind": "char", **(tokenizer or {})},
        "model": {**TINY_MODEL, **(model or {})},
        "train": {**TINY_TRAIN, **(train or {})},
    }
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def run(capsys, *args):
    """(exit code, stdout, stderr) of ``python -m transformer ARGS``, in process."""
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory after lm-train on the tiny corpus (validations at steps 30 and 60)."""
    root = tmp_path_factory.mktemp("lm")
    text_path = root / "corpus.txt"
    text_path.write_text(corpus_text())
    config = write_config(root / "tiny_lm.toml", text_path)
    run_dir = root / "run"
    assert cli.main(["lm-train", "--config", str(config), "--run-dir", str(run_dir)]) == 0
    return run_dir, text_path


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ training
def test_a_tiny_corpus_trains_and_its_loss_falls(trained):
    run_dir, _ = trained
    log = read_log(run_dir)
    train = [r["loss"] for r in log if r["type"] == "train"]
    valid = [r for r in log if r["type"] == "valid"]
    assert len(train) == TINY_TRAIN["max_steps"] and [r["step"] for r in valid] == [30, 60]
    vocab = len(set(corpus_text()))
    # The first batches score about ln V (a uniform guess); the last ones far less.
    assert abs(np.mean(train[:3]) - math.log(vocab)) < 0.5
    assert np.mean(train[-5:]) < np.mean(train[:5]) - 1.0
    assert valid[-1]["val_loss"] < valid[0]["val_loss"] < math.log(vocab) - 0.5
    assert (run_dir / "checkpoints").is_dir() and (run_dir / "tokenizer" / "tokenizer.json").is_file()


def test_lm_run_stopped_and_resumed_is_bit_identical(tmp_path):
    """The translation machinery (checkpoint, exact resume) serves the LM: the window generator, the
    dropout generator and AdamW's moments all carry over."""
    from transformer.checkpoint import load_checkpoint

    text_path = tmp_path / "corpus.txt"
    text_path.write_text(corpus_text(60))
    train = dict(max_steps=6, lr_schedule="constant", validate_every=3, eval_iters=1)
    config = write_config(tmp_path / "c.toml", text_path, model=dict(dropout=0.1, n_layers=1), train=train)
    states = {}
    for name, stops in (("straight", [6]), ("resumed", [3, 6])):
        for i, stop in enumerate(stops):
            args = [
                "lm-train",
                "--config",
                str(config),
                "--run-dir",
                str(tmp_path / name),
                f"train.max_steps={stop}",
            ] + (["--resume"] if i else [])
            assert cli.main(args) == 0
        states[name] = load_checkpoint(tmp_path / name / "checkpoints" / "step-000000006").model_state
    assert states["straight"].keys() == states["resumed"].keys()
    for key, value in states["straight"].items():
        assert value.tobytes() == states["resumed"][key].tobytes(), key
    first = [r["loss"] for r in read_log(tmp_path / "straight") if r["type"] == "train"]
    again = [r["loss"] for r in read_log(tmp_path / "resumed") if r["type"] == "train"]
    assert first == again and len(first) == 6


def test_adamw_decays_only_two_dimensional_weights():
    """nanoGPT's rule through the trainer's optimizer builder: biases and LayerNorm gains never decay."""
    model = LanguageModel(LMConfig(vocab_size=11, **{**TINY_MODEL, "bias": True}))
    optimizer = build_optimizer(model, train_settings(dict(TINY_TRAIN)))
    one_dimensional = sorted(name for name, p in model.named_parameters() if p.data.ndim < 2)
    assert one_dimensional and optimizer.no_decay == one_dimensional
    assert any(name.endswith(".bias") for name in one_dimensional)


def test_the_nanogpt_recipe_configs_build_the_reported_models():
    config = load_config("shakespeare_char")
    model = LanguageModel(LMConfig(vocab_size=65, **config["model"]))
    assert model.num_parameters() == 804_096 == sum(p.data.size for p in model.parameters())  # nanoGPT: 0.80M
    settings = train_settings(config["train"])
    assert (settings["max_steps"], settings["batch_size"], settings["warmup_steps"]) == (2000, 12, 100)
    long = load_config("shakespeare_char_long")
    train_settings(long["train"])
    LMConfig(vocab_size=65, **long["model"])


# ------------------------------------------------------------------------------------------------ sampling
def float64_model_and_tokenizer(seed=0):
    tokenizer = CharTokenizer.from_text(corpus_text())
    model = LanguageModel(LMConfig(vocab_size=tokenizer.vocab_size, dtype="float64", seed=seed, **TINY_MODEL))
    return model, tokenizer


@pytest.mark.parametrize(
    "options", [dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.2, top_p=0.9)]
)
def test_sampling_with_a_fixed_seed_is_reproducible_and_the_cache_changes_nothing(options):
    model, tokenizer = float64_model_and_tokenizer()
    n = 3 * TINY_MODEL["block_size"] + 5  # slides the window twice
    _, first = lm_generate(model, tokenizer, "the ", n, seed=7, **options)
    _, again = lm_generate(model, tokenizer, "the ", n, seed=7, **options)
    _, uncached = lm_generate(model, tokenizer, "the ", n, seed=7, use_cache=False, **options)
    _, other = lm_generate(model, tokenizer, "the ", n, seed=8, **options)
    assert len(first) == n and all(0 <= t < tokenizer.vocab_size for t in first)
    assert first == again == uncached
    assert first != other


def test_lm_sample_command_is_reproducible_and_starts_with_the_prompt(trained, capsys):
    run_dir, _ = trained
    outputs = []
    for extra in ([], [], ["--no-cache"]):
        code, out, err = run(
            capsys,
            "lm-sample",
            "--checkpoint",
            run_dir,
            "--prompt",
            "the cat",
            "--seed",
            5,
            "--max-new-tokens",
            40,
            "--top-k",
            10,
            *extra,
        )
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0].startswith("the cat") and len(outputs[0].rstrip("\n")) == len("the cat") + 40
    code, out, err = run(
        capsys,
        "lm-sample",
        "--checkpoint",
        run_dir,
        "--prompt",
        "the cat",
        "--seed",
        6,
        "--max-new-tokens",
        40,
        "--temperature",
        1.0,
    )
    assert code == 0 and out != outputs[0]


# ------------------------------------------------------------------------------------------------ evaluation
def numpy_token_losses(model, ids, block_size):
    """-log p(target) of every token but the first, windows of block_size, by a NumPy log-softmax."""
    import npgrad as ng

    losses = []
    with ng.no_grad():
        for start in range(0, len(ids) - 1, block_size):
            x = ids[start : min(start + block_size, len(ids) - 1)]
            y = ids[start + 1 : start + 1 + len(x)]
            logits = model(x[None, :]).data[0].astype(np.float64)  # (L, V)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            losses.append(-log_probs[np.arange(len(y)), y])
    return np.concatenate(losses)


def test_lm_eval_perplexity_is_exp_of_the_mean_token_loss(trained, capsys):
    run_dir, text_path = trained
    block = TINY_MODEL["block_size"]
    code, out, err = run(capsys, "lm-eval", "--checkpoint", run_dir, "--ngram", 3, "--stride", block)
    assert code == 0, err
    result = json.loads(out)
    assert (result["block_size"], result["stride"]) == (block, block)  # non-overlapping windows
    model, (tokenizer, _), _ = cli.load_model(run_dir)
    ids = np.asarray(tokenizer.encode([text_path.read_text()])[0])
    _, val = split_stream(ids, 0.9)
    token_losses = numpy_token_losses(model, val, model.config.block_size)
    ours = result["transformer"]
    assert result["split"] == "val" and result["tokens"] == len(val) - 1 == token_losses.size
    assert ours["loss"] == pytest.approx(token_losses.mean(), rel=1e-5)
    assert ours["perplexity"] == pytest.approx(math.exp(token_losses.mean()), rel=1e-5)
    assert ours["perplexity"] == pytest.approx(math.exp(ours["loss"]), rel=1e-12)
    # Characters are the tokens here: bits per character = bits per token = bits per byte (ASCII).
    assert ours["bits_per_char"] == pytest.approx(ours["loss"] / math.log(2), rel=1e-12)
    assert ours["bits_per_byte"] == pytest.approx(ours["bits_per_char"], rel=1e-12)
    # The Kneser-Ney baseline, side by side, on the same predicted tokens.
    from transformer.ngram import KneserNeyLM

    train, _ = split_stream(ids, 0.9)
    baseline = -KneserNeyLM(3, tokenizer.vocab_size).fit(train).token_log_probs(val)[1:].mean()
    assert set(result["ngram"]) == {"order", *ours}
    assert result["ngram"]["order"] == 3
    assert result["ngram"]["loss"] == pytest.approx(baseline, rel=1e-9)
    assert result["ngram"]["perplexity"] == pytest.approx(math.exp(baseline), rel=1e-9)
    assert 1.0 < result["ngram"]["perplexity"] < tokenizer.vocab_size


def test_lm_eval_slides_its_window_by_default(trained, capsys):
    run_dir, _ = trained
    losses, tokens = {}, set()
    for stride in ([], ["--stride", 16], ["--stride", 4]):
        code, out, err = run(capsys, "lm-eval", "--checkpoint", run_dir, *stride)
        assert code == 0, err
        result = json.loads(out)
        losses[result["stride"]] = result["transformer"]["loss"]
        tokens.add(result["tokens"])
        assert "ngram" not in result
    assert set(losses) == {8, 16, 4}  # default: block_size // 2
    assert len(tokens) == 1  # the same tokens, scored with different contexts
    assert len(set(losses.values())) == 3


def test_sliding_split_loss_with_stride_1_gives_every_token_its_full_context():
    """Brute force: token t predicted from exactly the min(t, L) tokens before it, one forward each."""
    import npgrad as ng

    model, tokenizer = float64_model_and_tokenizer(seed=4)
    ids = np.asarray(tokenizer.encode([corpus_text(3)])[0])[:40]
    L = TINY_MODEL["block_size"]
    expected = []
    with ng.no_grad():
        for t in range(1, len(ids)):
            logits = model(ids[max(0, t - L) : t][None, :]).data[0, -1]
            expected.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[ids[t]])
    loss, count = lm_split_loss(model, ids, L, stride=1, batch_size=7)
    assert count == len(ids) - 1
    assert loss == pytest.approx(np.mean(expected), rel=1e-12)
    assert lm_split_loss(model, ids, L, stride=L)[0] == pytest.approx(lm_split_loss(model, ids, L)[0], rel=1e-14)
    with pytest.raises(ValueError, match="stride must be between 1 and block_size=16, got 17"):
        lm_split_loss(model, ids, L, stride=17)


def test_split_loss_is_the_same_batched_or_window_by_window():
    model, tokenizer = float64_model_and_tokenizer(seed=2)
    ids = np.asarray(tokenizer.encode([corpus_text(30)])[0])
    batched, count = lm_split_loss(model, ids, 16, batch_size=32)
    single, count1 = lm_split_loss(model, ids, 16, batch_size=1)
    assert count == count1 == len(ids) - 1
    assert batched == pytest.approx(single, rel=1e-12)
    assert batched == pytest.approx(numpy_token_losses(model, ids, 16).mean(), rel=1e-12)


def test_sentencepiece_vocabulary_keeps_the_lines_and_round_trips(tmp_path):
    """A subword LM: SentencePiece trained on the corpus; the stream keeps the newlines (one byte piece
    between lines) so decoding the whole stream gives the text back."""
    from transformer.tasks import decode_lm_ids, encode_lm_text

    text = corpus_text(200)
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    config = {
        "data": {"text_path": str(path)},
        "model": dict(TINY_MODEL),
        "tokenizer": {"kind": "sentencepiece", "vocab_size": 300, "model_type": "bpe"},
    }
    task = LMTask(config, tmp_path / "run", train_settings(dict(TINY_TRAIN)))
    stream = np.concatenate([task.train_ids, task.val_ids])
    assert task.model_config.vocab_size == task.tokenizer.vocab_size == 300
    assert len(stream) < 0.6 * len(text)  # subwords: fewer tokens than characters
    assert decode_lm_ids(task.tokenizer, stream) == text
    assert np.array_equal(encode_lm_text(task.tokenizer, text), stream)
    newline = encode_prompt(task.tokenizer, "")
    assert encode_prompt(task.tokenizer, "the cat\nthe")[-2] == newline[0]


# ------------------------------------------------------------------------------------------------ errors
def lm_task(tmp_path, text, **model):
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    config = {"data": {"text_path": str(path)}, "tokenizer": {"kind": "char"}, "model": {**TINY_MODEL, **model}}
    return LMTask(config, tmp_path / "run", train_settings(dict(TINY_TRAIN)))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the corpus is empty"),
        ("x", r"the corpus is one character \('x'\)"),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", r"46 copies of one character \('a'\)"),
    ],
)
def test_empty_or_one_character_corpus_is_refused(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        lm_task(tmp_path, text)


def test_block_size_larger_than_a_split_is_refused(tmp_path):
    text = corpus_text(4)  # ~100 characters: a validation split of ~10
    with pytest.raises(ValueError, match=r"block_size=16 is too large for the validation split: it has \d+ tokens"):
        lm_task(tmp_path, text)
    with pytest.raises(ValueError, match=r"block_size=1000 is too large for the training split"):
        lm_task(tmp_path, corpus_text(30), block_size=1000)
    lm_task(tmp_path, corpus_text(30), block_size=8)  # long enough: accepted


def test_errors_reach_the_command_line_as_one_line(tmp_path, trained, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    config = write_config(tmp_path / "empty.toml", empty)
    code, _, err = run(capsys, "lm-train", "--config", config, "--run-dir", tmp_path / "run")
    assert code == 2 and "the corpus is empty" in err and "Traceback" not in err
    run_dir, _ = trained
    code, out, err = run(capsys, "lm-sample", "--checkpoint", run_dir, "--prompt", "the caté")
    assert code == 2 and out == ""
    assert "prompt: character 'é' (U+00E9) at position 7 is not in the model's vocabulary" in err


def test_prompt_outside_the_vocabulary_names_the_character_and_position():
    tokenizer = CharTokenizer.from_text("abc \n")
    assert encode_prompt(tokenizer, "ab c") == [2, 3, 1, 4]
    assert encode_prompt(tokenizer, "") == [tokenizer.index["\n"]]  # nanoGPT starts from a newline
    with pytest.raises(
        ValueError,
        match=r"character 'Z' \(U\+005A\) at position 2 is not in the model's "
        r"vocabulary of 5 characters",
    ):
        encode_prompt(tokenizer, "abZc")


def test_a_cosine_schedule_shorter_than_its_warm_up_is_refused_by_option_before_the_run_starts(tmp_path, capsys):
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(corpus_text(30))
    config = write_config(tmp_path / "c.toml", text_path, train={"warmup_steps": 100, "max_steps": 2})
    code, _, err = run(capsys, "lm-train", "--config", config, "--run-dir", tmp_path / "run")
    assert code == 2 and "Traceback" not in err
    assert "train.max_steps=2 is shorter than train.warmup_steps=100" in err
    assert not (tmp_path / "run").exists()  # refused before a tokenizer or anything else was written
    with pytest.raises(ConfigError, match=r"train.min_lr=0.5 is above train.lr=0.01"):
        train_settings({**TINY_TRAIN, "min_lr": 0.5})
