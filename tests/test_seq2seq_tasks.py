"""Summarisation (SAMSum) and dialogue (DailyDialog) on the encoder-decoder Transformer, end to end on tiny slices.

The slices are written into a temporary cache with the real files' layout and quirks (SAMSum's empty dialogue 13828807,
``\\n`` and ``\\r\\n`` turns; a DailyDialog line with fewer labels than utterances), and the loaders' checksums are
pointed at them. Properties: the quirks are reported, never silent; long sources are cut (reported), not dropped;
ROUGE sees detokenised text and stems; n-gram blocking really blocks; the length penalty keeps its formula; ``chat``
keeps the history across turns, forgets it on /reset, and survives empty and non-UTF-8 lines.
"""

from __future__ import annotations

import gzip
import json
import math
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npgrad as ng
from transformer import cli, datasets, search
from transformer.data import DataValidationError
from transformer.dialogue import distinct
from transformer.dialogue_corpora import TURN_SEP, load_dailydialog, load_samsum, split_turns
from transformer.summarise import lead, longest

from test_cli import run  # noqa: E402

pytest.importorskip("rouge_score")

NAMES = ["Amanda", "Jerry", "Tom", "Kate"]
WORDS = "cookies tomorrow party meet cinema dinner late train bring call ticket weekend".split()


def _dialogue(rng, turns, words=6):
    lines = [f"{NAMES[i % 2 + 2 * (rng.random() < 0.2)]}: " + " ".join(rng.choice(WORDS, words)) for i in range(turns)]
    return lines


def _samsum_rows(rng, count, start):
    rows = []
    for i in range(count):
        lines = _dialogue(rng, int(rng.integers(2, 6)))
        sep = "\n" if i % 3 == 0 else "\r\n"  # both separators occur in the real data
        summary = f"{lines[0].split(':')[0]} and {lines[1].split(':')[0]} talk about {lines[0].split()[1]}."
        rows.append({"id": str(start + i), "dialogue": sep.join(lines), "summary": summary})
    return rows


def _write_jsonl(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    path.write_bytes(gzip.compress(text) if gz else text)


def _dailydialog_zip(path, split, dialogues, labels):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{split}/dialogues_{split}.txt", "".join(" __eou__ ".join(d) + " __eou__\n" for d in dialogues))
        for kind in ("act", "emotion"):
            z.writestr(f"{split}/dialogues_{kind}_{split}.txt", "".join(" ".join("1" * n) + "\n" for n in labels))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache directory with tiny SAMSum and DailyDialog slices in the real layout (paths and formats)."""
    root = tmp_path_factory.mktemp("cache")
    rng = np.random.default_rng(0)
    (root / "samsum").mkdir()
    train = _samsum_rows(rng, 24, 1000)
    train.insert(5, {"id": "13828807", "dialogue": "", "summary": "problem with visualization of the content"})
    long_lines = _dialogue(rng, 12, words=30)  # longer than the tiny model's positions: cut, never dropped
    train.append({"id": "2000", "dialogue": "\r\n".join(long_lines), "summary": "A long chat about cookies."})
    _write_jsonl(root / "samsum" / "train.json.gz", train, gz=True)
    _write_jsonl(root / "samsum" / "validation.json", _samsum_rows(rng, 4, 3000))
    _write_jsonl(root / "samsum" / "test.json", _samsum_rows(rng, 4, 4000))
    (root / "dailydialog").mkdir()
    for split, count in (("train", 30), ("validation", 4), ("test", 4)):
        dialogues = [
            [" ".join(rng.choice(WORDS, 5)) + " ." for _ in range(int(rng.integers(2, 6)))] for _ in range(count)
        ]
        labels = [len(d) for d in dialogues]
        if split == "train":
            labels[7] -= 1  # as line 7,852 of the real training file: one label short
        _dailydialog_zip(root / "dailydialog" / f"{split}.zip", split, dialogues, labels)
    sums = {str(p.relative_to(root)): datasets.sha256_of(p) for p in root.rglob("*") if p.is_file()}
    return root, sums


@pytest.fixture
def data_dir(cache, monkeypatch):
    root, sums = cache
    for relative, digest in sums.items():
        monkeypatch.setitem(datasets.SHA256, relative, digest)
    return root


TINY = [
    "model.d_model=16",
    "model.n_heads=2",
    "model.num_encoder_layers=1",
    "model.num_decoder_layers=1",
    "model.d_ff=32",
    "tokenizer.vocab_size=300",
    "train.max_tokens=512",
    "train.max_steps=2",
    "train.validate_every=2",
    "train.warmup_steps=2",
    "train.bleu_max_sentences=2",
    "train.log_every=1",
]


# ------------------------------------------------------------------------------------------------ loaders
def test_samsum_loader_reports_the_empty_dialogue_and_joins_turns(data_dir, caplog):
    corpus = load_samsum(data_dir=data_dir)
    assert len(corpus["train"]) == 25 and len(corpus["valid"]) == 4 and len(corpus["test"]) == 4
    assert "13828807" in caplog.text and "empty" in caplog.text
    # \n and \r\n turns both become one separator each
    assert all(len(split_turns(s)) >= 2 and "\r" not in s and "\n" not in s for s in corpus["train"].src)
    with pytest.raises(DataValidationError, match="empty"):
        load_samsum(data_dir=data_dir, validation=datasets.ValidationOptions(None, None, None, on_bad="error"))


def test_samsum_loader_refuses_a_checksum_mismatch(data_dir, monkeypatch):
    monkeypatch.setitem(datasets.SHA256, "samsum/test.json", "0" * 64)
    with pytest.raises(datasets.ChecksumError, match="samsum/test.json"):
        load_samsum(data_dir=data_dir)


def test_dailydialog_label_mismatch_is_reported_and_examples_use_k_turns(data_dir, caplog):
    corpus = load_dailydialog(data_dir=data_dir, context_turns=2)
    assert "line 8" in caplog.text and "label" in caplog.text
    pairs = corpus["train"]
    assert all(1 <= len(split_turns(s)) <= 2 for s in pairs.src)
    with pytest.raises(DataValidationError, match="line 8"):
        load_dailydialog(data_dir=data_dir, on_bad="error")


def test_masked_lm_text_from_the_dialogue_corpora_is_their_training_split_only(data_dir):
    """data.sources = ["dailydialog", "samsum"] for mlm-train: DailyDialog's training utterances, then SAMSum's
    training turns without "Name: " and its summaries; nothing of validation or test; an unknown source is refused."""
    from transformer.classify import mlm_data_settings, mlm_texts
    from transformer.config import ConfigError

    texts, files = mlm_texts(mlm_data_settings({"sources": ["dailydialog", "samsum"], "data_dir": str(data_dir)}))
    assert [f.parent.name + "/" + f.name for f in files] == ["dailydialog/train.zip", "samsum/train.json.gz"]
    with zipfile.ZipFile(data_dir / "dailydialog" / "train.zip") as z:
        raw = z.read("train/dialogues_train.txt").decode()
    utterances = [u.strip() for line in raw.splitlines() for u in line.split("__eou__") if u.strip()]
    expected = list(utterances)
    for line in gzip.decompress((data_dir / "samsum" / "train.json.gz").read_bytes()).decode().splitlines():
        row = json.loads(line)
        turns = [t for t in row["dialogue"].replace("\r\n", "\n").split("\n") if t.strip()]
        expected += [t.partition(": ")[2].strip() for t in turns] + [row["summary"]]
    assert texts == expected and len(utterances) > 30
    assert "problem with visualization of the content" in texts  # the empty dialogue's summary still counts
    assert not any(t.split(":")[0] in NAMES for t in texts)
    with pytest.raises(ConfigError, match="'dailydialog', 'samsum'"):
        mlm_data_settings({"sources": ["imdb"]})


def test_extractive_baselines():
    source = f"A: one {TURN_SEP} B: two words here {TURN_SEP} A: three {TURN_SEP} B: the longest turn of all"
    assert lead(source, 2) == "A: one\nB: two words here"
    assert longest(source, 2) == "B: two words here\nB: the longest turn of all"  # dialogue order


# ------------------------------------------------------------------------------------------------ metrics
def test_rouge_stems_and_refuses_pieces():
    from transformer.summarise import rouge_scores, sentence_lines

    assert sentence_lines("Tom is late. Is Ann?\nAnn: yes 3.5 km") == "Tom is late.\nIs Ann?\nAnn: yes 3.5 km"

    assert rouge_scores(["the cats were sitting"], ["the cat was sitting"])["rouge1"] > 70  # stemmed: cats = cat
    assert rouge_scores(["a b"], ["a b"])["rougeL"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="detokenised"):
        rouge_scores(["\u2581the \u2581cat"], ["the cat"])


def test_distinct():
    assert distinct(["a b a b"], 1) == 0.5 and distinct(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct(["", "a"], 2) == 0.0


# ------------------------------------------------------------------------------------------------ n-gram blocking
def _brute_force_banned(prefix, n):
    banned = set()
    for j in range(len(prefix) - n + 1):
        if n == 1 or list(prefix[j : j + n - 1]) == list(prefix[len(prefix) - n + 1 :]):
            banned.add(prefix[j + n - 1])
    return banned


@given(st.lists(st.lists(st.integers(0, 4), min_size=6, max_size=6), min_size=1, max_size=4), st.integers(1, 4))
def test_block_repeated_ngrams_matches_brute_force(prefixes, n):
    prefixes = np.array(prefixes)
    log_probs = search.block_repeated_ngrams(np.zeros((len(prefixes), 5)), prefixes, n)
    for row, prefix in zip(log_probs, prefixes.tolist()):
        assert set(np.flatnonzero(np.isinf(row))) == _brute_force_banned(prefix, n)


class Repeater:
    """A model whose next-token log-probs never depend on the history: token 4 best, then 5, 6, ..., EOS worst, so
    plain decoding repeats 4 forever."""

    V, BOS, EOS, PAD = 12, 2, 3, 0

    def __init__(self):
        self.config = SimpleNamespace(bos_id=2, eos_id=3, pad_id=0, src_vocab_size=self.V, max_len=None)
        scores = -np.arange(self.V, dtype=np.float64) * 0.5
        scores[:4] = -50.0  # PAD, UNK, BOS and EOS least likely
        self.row = scores - np.log(np.exp(scores).sum())

    class State:
        def reorder(self, index):
            pass

    def encode(self, src):
        return ng.tensor(np.zeros(src.shape + (1,))), src != 0

    def start_decoding(self, memory, src_pad):
        return Repeater.State()

    def decode_step(self, tokens, state):
        return ng.tensor(np.tile(self.row, (len(tokens), 1)))


def _repeats(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_size_blocks_repeats_in_greedy_and_beam(n):
    model, src = Repeater(), np.full((2, 3), 5)
    plain = search.greedy(model, src, max_len=8).tokens[0]
    assert plain == [4] * 8 and _repeats(plain, n) > 0  # the property below can fail
    greedy = search.greedy(model, src, max_len=8, no_repeat_ngram_size=n).tokens
    beams = search.beam_search(model, src, beam_size=3, nbest=3, max_len=8, alpha=1.0, no_repeat_ngram_size=n)
    for tokens in greedy + [h.tokens for hyps in beams for h in hyps]:
        assert _repeats(tokens, n) == 0, tokens
    for h in (h for hyps in beams for h in hyps):  # the length penalty keeps its formula with blocking on
        assert math.isclose(h.normalized_score, h.score / ((5 + h.length) / 6) ** 1.0, rel_tol=1e-12)
    if n == 1:
        assert greedy[0] == [4, 5, 6, 7, 8, 9, 10, 11]  # each token once, best first


def test_sampling_through_greedy_is_seeded():
    model, src = Repeater(), np.full((3, 3), 5)
    draw = [
        search.greedy(model, src, max_len=6, temperature=1.0, rng=np.random.default_rng(s)).tokens for s in (1, 1, 2)
    ]
    assert draw[0] == draw[1] and draw[0] != draw[2]
    assert search.greedy(model, src, max_len=6, temperature=1.0, top_k=1).tokens == [[4] * 6] * 3


# ------------------------------------------------------------------------------------------------ end to end
def test_summarisation_end_to_end(data_dir, tmp_path, capsys, monkeypatch):
    from rouge_score import rouge_scorer

    run_dir = tmp_path / "sum"
    args = ["--config", "samsum", "--run-dir", run_dir, f"data.data_dir={data_dir}", "model.max_len=48", *TINY]
    code, out, err = run(capsys, "train", *args)
    assert code == 0, err
    assert "keep their first 46" in err  # the long dialogue is cut, and said so
    assert "13828807" in err
    assert "valid_rougeL" in (run_dir / "log.jsonl").read_text()

    seen = []
    original = rouge_scorer.RougeScorer.score
    monkeypatch.setattr(
        rouge_scorer.RougeScorer, "score", lambda self, t, p: seen.append((t, p)) or original(self, t, p)
    )
    code, out, err = run(capsys, "evaluate", "--checkpoint", run_dir, "--beam", "2", "--no-repeat-ngram-size", "2")
    assert code == 0, err
    scores = json.loads(out)
    assert {"rouge1", "rouge2", "rougeL", "perplexity"} <= set(scores) and scores["summaries"] == 4
    refs = [json.loads(line)["summary"] for line in (data_dir / "samsum" / "test.json").read_text().splitlines()]
    assert [t for t, _ in seen] == refs  # raw references
    assert all("\u2581" not in p and TURN_SEP not in p for _, p in seen)  # detokenised hypotheses

    code, out, err = run(capsys, "summary-baselines", "--data-dir", data_dir, "--split", "valid")
    assert code == 0, err
    assert {"LEAD-3", "LONGEST-3"} == set(json.loads(out)) - {"split", "corpus"}


@pytest.mark.parametrize("override", ["tokenizer.sample_alpha=0.1", "data.train_weight=2"])
def test_summarisation_refuses_a_training_mix_or_subword_sampling(data_dir, tmp_path, capsys, override):
    # The mix would neither cut long dialogues nor keep a dialogue's examples (one file line) apart: refused.
    args = ["--config", "samsum", "--run-dir", tmp_path / "sum", f"data.data_dir={data_dir}", *TINY, override]
    code, _, err = run(capsys, "train", *args)
    assert code == 2 and "does not take them" in err


def test_translation_configs_refuse_the_long_source_keys(tmp_path, capsys):
    code, _, err = run(capsys, "prepare", "--config", "tiny", "--run-dir", tmp_path / "r", "data.truncate_src=10")
    assert code == 2 and "truncate_src" in err


@pytest.fixture(scope="module")
def dialogue_run(cache, tmp_path_factory):
    root, sums = cache
    run_dir = tmp_path_factory.mktemp("dialogue") / "run"
    with pytest.MonkeyPatch.context() as patch:
        for relative, digest in sums.items():
            patch.setitem(datasets.SHA256, relative, digest)
        args = ["--config", "dailydialog", "--run-dir", run_dir, f"data.data_dir={root}", "model.max_len=32", *TINY]
        assert cli.main([str(a) for a in ["train", *args]]) == 0
    return run_dir


def test_dialogue_evaluate_greedy_beam_and_sampling(dialogue_run, data_dir, capsys):
    log = (dialogue_run / "log.jsonl").read_text()
    assert "valid_distinct2" in log and "valid_ppl" in log
    results = []
    for options in (["--beam", "1"], ["--beam", "2"], ["--temperature", "1", "--seed", "3"]):
        code, out, err = run(capsys, "evaluate", "--checkpoint", dialogue_run, *options)
        assert code == 0, err
        results.append(json.loads(out))
    for scores in results:
        assert {"perplexity", "word_perplexity", "bleu1", "bleu2", "distinct1", "distinct2"} <= set(scores)
        assert scores["responses"] == len(load_dailydialog(data_dir=data_dir)["test"]) and 0 <= scores["distinct2"] <= 1
    assert results[0]["perplexity"] == results[2]["perplexity"]  # decoding does not change the references' loss


def test_chat_keeps_history_resets_and_survives_bad_lines(dialogue_run, data_dir, capsys, monkeypatch):
    lines = b"hello there .\nwhat time is it ?\n\n\xff\xfe bad\n/reset\nbye now .\n"
    code, out, err = run(
        capsys,
        "chat",
        "--checkpoint",
        dialogue_run,
        "--show-context",
        "--beam",
        "1",
        stdin=lines,
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    replies = out.splitlines()
    assert len(replies) == 4 and replies[2] == "(new conversation)"
    contexts = [line.removeprefix("[context] ") for line in err.splitlines() if line.startswith("[context]")]
    assert contexts[0] == "hello there ."
    # The second turn reads the first message and the model's first reply: the history is kept.
    assert split_turns(contexts[1]) == ["hello there .", replies[0], "what time is it ?"][-3:]
    assert contexts[2] == "bye now ."  # forgotten after /reset
    assert "empty message" in err and "line 4 is not valid UTF-8" in err


def test_chat_quits_on_quit(dialogue_run, capsys, monkeypatch):
    code, out, err = run(
        capsys, "chat", "--checkpoint", dialogue_run, stdin=b"hi .\n/quit\nnever read .\n", monkeypatch=monkeypatch
    )
    assert code == 0 and len(out.splitlines()) == 1
