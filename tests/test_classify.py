"""Text classification and masked-LM pre-training (transformer/classify.py, transformer/classifier.py).

End to end on a tiny made-up sentiment set: classify-train learns it, classify-eval scores it (accuracy, macro-F1,
confusion matrix), predict prints one line per input; mlm-train pre-trains the encoder and classify-train
fine-tunes it (--init-from, the head fresh). The classification head passes gradcheck (float64, both backends)
and its float32 run matches float64; BERT's masking draws 15% of the real pieces, 80/10/10, never [CLS] or
padding, and only the chosen positions carry loss. Bad input is refused with its file and line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

import npgrad as ng
from npgrad import functional as F
from npgrad.testing import assert_float32_matches_float64

from transformer.classifier import EncoderConfig, TextEncoder, classification_logits, mask_tokens
from transformer.classify import classification_scores, read_labelled_tsv
from transformer.data import DataValidationError

from test_cli import assert_clean_error, run

POSITIVE, NEGATIVE = ["good", "great", "lovely", "superb"], ["bad", "awful", "dull", "boring"]
FILLER = ["the", "movie", "film", "was", "a", "really", "plot", "story"]


def sentiment_tsv(path, n, seed):
    rng = np.random.default_rng(seed)
    lines = ["sentence\tlabel"]
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, 3, replace=False)) + [str(rng.choice(POSITIVE if label else NEGATIVE))]
        rng.shuffle(words)
        lines.append(" ".join(words) + f" \t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


TINY = ["model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.max_len=12", "model.d_ff=32"]
BUDGET = ["train.warmup_steps=0", "train.lr_schedule=constant", "train.lr=0.003", "train.max_tokens=256"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sst")
    sentiment_tsv(root / "train.tsv", 300, 0)
    sentiment_tsv(root / "dev.tsv", 40, 1)
    texts = [line.split("\t")[0] for line in (root / "train.tsv").read_text().splitlines()[1:]]
    (root / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return root


def classify_args(root, run_dir, *extra):
    return [
        "--config",
        "sst2_classify",
        "--run-dir",
        run_dir,
        "data.corpus=tsv",
        f"data.train_path={root / 'train.tsv'}",
        f"data.valid_path={root / 'dev.tsv'}",
        "tokenizer.vocab_size=300",
        *BUDGET,
        *extra,
    ]


@pytest.fixture(scope="module")
def classifier_run(data):
    from transformer import cli

    run_dir = data / "scratch"
    args = classify_args(data, run_dir, *TINY, "train.max_steps=40", "train.validate_every=20")
    assert cli.main(["classify-train", *map(str, args)]) == 0
    return run_dir


def test_a_classifier_learns_the_tiny_set_and_is_scored(classifier_run, capsys):
    log = [json.loads(line) for line in (classifier_run / "log.jsonl").read_text().splitlines()]
    valid = [r for r in log if r["type"] == "valid"]
    assert [r["step"] for r in valid] == [20, 40]
    assert valid[-1]["valid_accuracy"] >= 0.9 and 0 <= valid[-1]["valid_macro_f1"] <= 1
    code, out, err = run(capsys, "classify-eval", "--checkpoint", classifier_run)
    assert code == 0, err
    scores = json.loads(out)
    assert scores["texts"] == 40 and scores["labels"] == ["negative", "positive"]
    assert np.sum(scores["confusion"]) == 40 and scores["accuracy"] == max(r["valid_accuracy"] for r in valid)
    assert "confusion matrix" in err and "negative" in err


def test_predict_prints_one_line_per_input(classifier_run, capsys, tmp_path):
    texts = ["the film was great", "a really awful story", "boring", "x " * 40]  # the last one is cut (said)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "predict", "--checkpoint", classifier_run, "--input", tmp_path / "in.txt")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(texts)
    labels = [line.split("\t")[0] for line in lines]
    assert labels[:3] == ["positive", "negative", "negative"]
    assert all(0.5 <= float(line.split("\t")[1]) <= 1 for line in lines)
    assert "1 text(s) longer than model.max_len=12" in err and "truncated" in err
    (tmp_path / "gap.txt").write_text("good\n\nbad\n", encoding="utf-8")
    code, _, err = run(capsys, "predict", "--checkpoint", classifier_run, "--input", tmp_path / "gap.txt")
    assert_clean_error(code, err, "gap.txt", "line 2 is empty")


def test_an_ensemble_averages_its_members_probabilities(classifier_run, data, capsys, tmp_path):
    """classify-eval / predict with several --checkpoint: the mean of the members' class probabilities (each member
    reads the texts with its own tokenizer); a model twice is that model; mismatched label sets are refused."""
    from transformer import cli

    other = data / "scratch_seed2"
    args = classify_args(data, other, *TINY, "train.max_steps=6", "train.validate_every=6", "train.seed=2")
    assert cli.main(["classify-train", *map(str, [*args, "model.seed=2", "tokenizer.vocab_size=295"])]) == 0
    texts = ["the film was great", "a really awful story", "dull plot", "lovely"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")

    def positive(*checkpoints, repeat_flag=False):  # p(positive) of each text, from predict's "label<TAB>p" lines
        flags = [a for c in checkpoints for a in ("--checkpoint", c)] if repeat_flag else ["--checkpoint", *checkpoints]
        code, out, err = run(capsys, "predict", *flags, "--input", tmp_path / "in.txt")
        assert code == 0, err
        rows = [line.split("\t") for line in out.splitlines()]
        return np.array([float(p) if label == "positive" else 1 - float(p) for label, p in rows])

    one, two = positive(classifier_run), positive(other)
    assert np.abs(one - two).max() > 0.01  # two different models, or the mean below proves nothing
    np.testing.assert_allclose(positive(classifier_run, other), (one + two) / 2, atol=2e-4)  # 4 printed decimals
    np.testing.assert_allclose(positive(classifier_run, classifier_run), one, atol=1e-12)
    # the flag repeated is the same ensemble (never only the last one)
    np.testing.assert_allclose(positive(classifier_run, other, repeat_flag=True), (one + two) / 2, atol=2e-4)

    code, single, err = run(capsys, "classify-eval", "--checkpoint", classifier_run)
    code2, twice, err2 = run(capsys, "classify-eval", "--checkpoint", classifier_run, classifier_run)
    assert code == code2 == 0, err + err2
    single, twice = json.loads(single), json.loads(twice)
    assert len(twice.pop("checkpoints")) == 2 and len(single.pop("checkpoints")) == 1 and "checkpoint" not in twice
    assert twice.pop("member_accuracies") == [single["accuracy"]] * 2
    single.pop("checkpoint")
    assert single == twice and "ensemble of 2" in err2

    renamed = data / "renamed"
    args = classify_args(data, renamed, *TINY, "train.max_steps=2", "train.validate_every=2")
    assert cli.main(["classify-train", *map(str, args), 'data.label_names=["bad", "good"]']) == 0
    code, _, err = run(capsys, "classify-eval", "--checkpoint", classifier_run, renamed)
    assert_clean_error(code, err, "labels ['bad', 'good']", "share one label set")


def test_mlm_pre_training_then_fine_tuning(data, capsys):
    mlm_dir, ft_dir = data / "mlm", data / "ft"
    args = [
        "--config",
        "sst2_mlm",
        "--run-dir",
        mlm_dir,
        "data.sources=[]",
        f"data.text_path={data / 'texts.txt'}",
        "data.valid_texts=20",
        "tokenizer.vocab_size=300",
        *TINY,
        *BUDGET,
        "train.max_steps=4",
        "train.validate_every=2",
    ]
    code, _, err = run(capsys, "mlm-train", *args)
    assert code == 0, err
    valid = [json.loads(line) for line in (mlm_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in valid if r["type"] == "valid"] == [2, 4]

    def fine_tune(run_dir, *extra):
        args = classify_args(data, run_dir, "train.max_steps=2", "train.validate_every=2", *extra)
        args[1] = "sst2_finetune"  # its [model] comes from the checkpoint, with the config's dropout on top
        return run(capsys, "classify-train", *args, "--init-from", mlm_dir)

    # Without init_strict=false the masked-LM head has no place in a classifier: refused, with the way out.
    code, _, err = fine_tune(data / "strict", "train.init_strict=true")
    assert_clean_error(code, err, "does not fit the model", "unexpected mlm_bias", "init_strict=false")
    code, _, err = fine_tune(ft_dir)
    assert code == 0, err
    assert "parameters loaded, 2 reset" in err
    saved = json.loads((ft_dir / "config.json").read_text())
    assert saved["model"]["head"] == "classify" and saved["model"]["d_model"] == 16
    pre_config = json.loads((mlm_dir / "config.json").read_text())["model"]
    assert pre_config["dropout"] == 0.0 and saved["model"]["dropout"] == 0.1  # sst2_finetune's [model] on top
    # The classifier kept the encoder's weights at step 0: its embedding is the pre-trained one, plus 2 updates.
    from safetensors.numpy import load_file

    pre = load_file(str(mlm_dir / "checkpoints" / "step-000000004" / "model.safetensors"))
    post = load_file(str(ft_dir / "checkpoints" / "step-000000002" / "model.safetensors"))
    assert np.abs(pre["embed.weight"] - post["embed.weight"]).max() < 0.05
    # A masked-LM checkpoint is no classifier: predict refuses it.
    code, _, err = run(capsys, "predict", "--checkpoint", mlm_dir, "--input", data / "texts.txt")
    assert_clean_error(code, err, "masked-language-model checkpoint")


# ------------------------------------------------------------------------------------------ the head's gradient
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
@given(
    B=st.integers(1, 3),
    L=st.integers(1, 5),
    C=st.integers(1, 4),
    K=st.integers(2, 4),
    seed=st.integers(0, 2**16),
)
def test_classification_head_gradcheck(backend, pooling, B, L, C, K, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L + 1, size=B)
    real = np.arange(L)[None, :] < lengths[:, None]  # (B, L), padding at the end
    h = ng.tensor(rng.standard_normal((B, L, C)), requires_grad=True)
    w = ng.tensor(rng.standard_normal((C, K)), requires_grad=True)
    b = ng.tensor(rng.standard_normal(K), requires_grad=True)
    labels = rng.integers(K, size=B)
    with ng.use_backend(backend):
        assert ng.gradcheck(lambda h, w, b: classification_logits(h, real, w, b, pooling), [h, w, b])
        assert ng.gradcheck(
            lambda h, w, b: F.cross_entropy(classification_logits(h, real, w, b, pooling), labels), [h, w, b]
        )
        if pooling == "mean":  # padded outputs never reach the logits
            logits = classification_logits(h, real, w, b, pooling)
            logits.sum().backward()
            assert np.all(h.grad[~real] == 0)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_classification_head_float32_matches_float64(pooling):
    rng = np.random.default_rng(3)
    real = np.array([[True] * 6, [True] * 3 + [False] * 3])
    inputs = [
        ng.tensor(rng.standard_normal((2, 6, 8)), requires_grad=True),
        ng.tensor(rng.standard_normal((8, 3)), requires_grad=True),
        ng.tensor(rng.standard_normal(3), requires_grad=True),
    ]
    assert_float32_matches_float64(lambda h, w, b: classification_logits(h, real, w, b, pooling), inputs)


def test_the_whole_classifier_gradchecks_in_float64():
    cfg = EncoderConfig(vocab_size=12, d_model=8, n_heads=2, n_layers=1, max_len=6, dropout=0.0, dtype="float64")
    model = TextEncoder(cfg)
    ids = np.array([[2, 5, 6, 7, 0], [2, 9, 0, 0, 0]])
    labels = np.array([1, 0])
    params = [model.head.weight, model.head.bias, model.final_norm.weight]

    def loss(*_):
        return F.cross_entropy(model(ids), labels)

    assert ng.gradcheck(loss, params)


# ------------------------------------------------------------------------------------------ masked LM
def test_masking_follows_bert_80_10_10_and_spares_cls_and_padding():
    rng = np.random.default_rng(0)
    B, L, V, mask_id = 200, 60, 500, 499
    lengths = rng.integers(2, L + 1, size=B)
    real = np.arange(L)[None, :] < lengths[:, None]
    ids = np.where(real, rng.integers(4, V - 1, size=(B, L)), 0)
    ids[:, 0] = 2
    inputs, positions, targets = mask_tokens(ids, real, rng, mask_id=mask_id, vocab_low=4, vocab_high=V - 1)
    candidates = real.copy()
    candidates[:, 0] = False
    chosen = np.zeros(B * L, dtype=bool)
    chosen[positions] = True
    assert not chosen[~candidates.reshape(-1)].any()  # never [CLS] or padding
    assert abs(chosen.sum() / candidates.sum() - 0.15) < 0.01
    np.testing.assert_array_equal(targets, ids.reshape(-1)[positions])
    np.testing.assert_array_equal(inputs.reshape(-1)[~chosen], ids.reshape(-1)[~chosen])  # the rest untouched
    got = inputs.reshape(-1)[positions]
    masked, kept = got == mask_id, got == targets
    randomised = ~masked & ~kept
    n = len(positions)
    assert abs(masked.mean() - 0.8) < 0.03
    # A random piece equals the original 1 time in ~500: "kept" is 10% plus that.
    assert abs(kept.mean() - 0.1) < 0.02 and abs(randomised.mean() - 0.1) < 0.02, (n, kept.mean())
    assert np.all((got[randomised] >= 4) & (got[randomised] < V - 1))
    # Seeded: the same generator state gives the same masks.
    first = mask_tokens(ids, real, np.random.default_rng(5), mask_id=mask_id, vocab_low=4, vocab_high=V - 1)
    again = mask_tokens(ids, real, np.random.default_rng(5), mask_id=mask_id, vocab_low=4, vocab_high=V - 1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_only_the_masked_positions_carry_loss():
    cfg = EncoderConfig(vocab_size=30, head="mlm", d_model=8, n_heads=2, n_layers=1, max_len=8, dropout=0.0)
    model = TextEncoder(cfg)
    rng = np.random.default_rng(1)
    ids = rng.integers(4, 29, size=(3, 8))
    ids[:, 0], ids[2, 5:] = 2, 0
    inputs, positions, targets = mask_tokens(ids, ids != 0, rng, mask_id=29, vocab_low=4, vocab_high=29, prob=0.3)
    loss = F.cross_entropy(model.mlm_logits(inputs, positions), targets, reduction="sum")
    # The same loss from the logits at every position with every unchosen position ignored: they add nothing.
    h, _ = model.encode(inputs)
    every = model.mlm_logits(inputs, np.arange(ids.size))  # (B*L, V)
    labels = np.full(ids.size, -100)
    labels[positions] = targets
    full = F.cross_entropy(every, labels, ignore_index=-100, reduction="sum")
    np.testing.assert_allclose(float(loss.data), float(full.data), rtol=1e-5)
    assert h.shape == (3, 8, 8) and len(positions) < (ids != 0).sum()


# ------------------------------------------------------------------------------------------ bad input, metrics
@pytest.mark.parametrize(
    "line, fragments",
    [
        ("a fine film \t2", ["line 3", "label '2' is not one of the labels"]),
        ("a fine film \t", ["line 3", "the label is missing"]),
        ("a fine film", ["line 3", "has no label"]),
        ("   \t1", ["line 3", "the text is empty"]),
    ],
)
def test_bad_lines_are_refused_with_file_and_line(tmp_path, line, fragments):
    path = tmp_path / "t.tsv"
    path.write_text(f"sentence\tlabel\ngood \t1\n{line}\nbad \t0\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as caught:
        read_labelled_tsv(path, ["0", "1"])
    for fragment in [str(path), *fragments]:
        assert fragment in str(caught.value)


def test_empty_texts_can_be_filtered_and_are_reported(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\ngood \t1\n \t0\nbad \t0\n", encoding="utf-8")
    texts = read_labelled_tsv(path, ["0", "1"], on_bad="filter")
    assert texts.texts == ["good", "bad"] and texts.lines == [2, 4] and texts.labels.tolist() == [1, 0]


def test_scores_and_confusion_matrix():
    gold, predicted = np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 0, 0])
    scores = classification_scores(gold, predicted, 3)
    assert scores["confusion"] == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    assert scores["accuracy"] == pytest.approx(3 / 6)
    f1 = [2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2), 2 / 3, 0.0]  # class 2: never predicted -> 0
    assert scores["macro_f1"] == pytest.approx(np.mean(f1))
