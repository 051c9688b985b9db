"""The low-resource recipe's pieces (transformer/mixing.py, transformer/backtranslate.py, subword sampling).

- Subword sampling (unigram and BPE-dropout): segmentations differ from the deterministic one and between seeds,
  always detokenise to the same text, and the same seed gives the same segmentations whatever ran before.
- The training mix honours each corpus's weight (whole and fractional), tags only tagged sources, re-segments every
  epoch as a pure function of (seed, epoch), and a run with sampling and a mix resumes bit-exactly.
- Validation keeps the deterministic segmentation while training samples; examples sharing a file line keep their
  own texts; corpus entries (TSV or two aligned files) are checked; a resume that changes the sampling says so.
- Back-translation keeps the input's line count and order, restarts cleanly after an interruption (a partial last
  line is dropped), refuses a file that is another input's output or was decoded with other settings, bad input
  lines, a reverse model of the wrong direction, the input as output and --top-k without --sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_clean_error
from test_train import STEPS, assert_bit_identical, final_state, run_cli, train_args

from transformer import cli
from transformer.backtranslate import (
    BacktranslationError,
    backtranslate,
    check_direction,
    completed_lines,
    noise_words,
    read_monolingual,
)
from transformer.config import ConfigError
from transformer.datasets import ParallelText
from transformer.mixing import MixBatchIterator, TrainingMix, TrainingPart, copies, sampling_settings
from transformer.model import Transformer, TransformerConfig
from transformer.tokenizer import train_sentencepiece

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DE = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()
EN = (FIXTURES / "tiny.en").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tokenizer(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"spm_{request.param}")
    tok, _ = train_sentencepiece(
        DE, EN, directory, vocab_size=400, model_type=request.param, user_defined_symbols=["<bt>"]
    )
    return tok


def refused(args, capsys, *fragments):
    capsys.readouterr()
    assert_clean_error(cli.main(args), capsys.readouterr().err, *fragments)


def alpha_of(tok):
    return 0.3 if tok.options["model_type"] == "bpe" else 0.5  # BPE: the dropout probability


# ------------------------------------------------------------------------------------------------ subword sampling
def test_sampled_segmentations_differ_but_detokenise_to_the_same_text(tokenizer):
    plain = tokenizer.encode(EN)
    sampled = tokenizer.sample_encode(EN, alpha_of(tokenizer), -1, seed=1)
    assert sampled != plain
    assert sum(a != b for a, b in zip(sampled, tokenizer.sample_encode(EN, alpha_of(tokenizer), -1, seed=2))) > 5
    assert tokenizer.decode(sampled) == tokenizer.decode(plain)


def test_sampling_is_reproducible_from_the_seed_whatever_ran_before(tokenizer):
    first = tokenizer.sample_encode(DE, alpha_of(tokenizer), 8, seed=7)
    tokenizer.sample_encode(DE, alpha_of(tokenizer), 8, seed=99)  # SentencePiece's generator moved on in between
    tokenizer.encode(DE)
    assert tokenizer.sample_encode(DE, alpha_of(tokenizer), 8, seed=7) == first


def test_tag_piece_is_one_token(tokenizer):
    tag = tokenizer.piece_id("<bt>")
    assert tag is not None and tokenizer.encode(["<bt>"])[0][-1] == tag
    assert tokenizer.piece_id("<no such piece>") is None


def test_sampling_settings_are_checked():
    assert sampling_settings({"sample_alpha": 0.0}) is None
    assert sampling_settings({"sample_alpha": 0.1, "nbest": 64, "model_type": "unigram"}) == (0.1, 64)
    with pytest.raises(ConfigError, match="BPE-dropout probability"):
        sampling_settings({"sample_alpha": 1.5, "model_type": "bpe"})
    with pytest.raises(ConfigError, match="nbest=1"):
        sampling_settings({"sample_alpha": 0.1, "nbest": 1, "model_type": "unigram"})
    with pytest.raises(ConfigError, match="sample_alpha"):
        sampling_settings({"sample_alpha": -1})


# ------------------------------------------------------------------------------------------------ the training mix
def parts(real_weight=1.0, synthetic_weight=1.0):
    real = ParallelText(DE[:20], EN[:20], "de", "en")
    synthetic = ParallelText(DE[20:], EN[20:], "de", "en")  # 10 pairs
    return [TrainingPart("real", real, real_weight), TrainingPart("synthetic", synthetic, synthetic_weight, True)]


def make_mix(tok, sampling=None, **weights):
    return TrainingMix(parts(**weights), tok, tok, seed=3, max_len=200, sampling=sampling, tag_id=tok.piece_id("<bt>"))


def origin_counts(mix, epoch, tag):
    dataset = mix.dataset(epoch)
    tagged = sum(1 for ids in dataset.src_ids if len(ids) and ids[0] == tag)
    return len(dataset) - tagged, tagged


@pytest.mark.parametrize("real_weight, synthetic_weight", [(1.0, 1.0), (3.0, 1.0), (1.0, 0.5), (2.0, 2.5)])
def test_mix_honours_weights_and_tags_only_tagged_sources(tokenizer, real_weight, synthetic_weight):
    mix = make_mix(tokenizer, real_weight=real_weight, synthetic_weight=synthetic_weight)
    tag = tokenizer.piece_id("<bt>")
    for epoch in range(3):
        assert origin_counts(mix, epoch, tag) == (round(20 * real_weight), round(10 * synthetic_weight))
    assert len(mix) == round(20 * real_weight) + round(10 * synthetic_weight)
    # Every real pair appears floor(w) times (or more), each tagged source is a synthetic pair's with the tag.
    dataset = mix.dataset(0)
    real_sources = {tuple(ids) for ids in tokenizer.encode(DE[:20])}
    synthetic_sources = {(tag, *ids) for ids in tokenizer.encode(DE[20:])}
    assert {tuple(ids) for ids in dataset.src_ids} <= real_sources | synthetic_sources


def test_fractional_weight_takes_another_subset_each_epoch_reproducibly():
    rng = lambda epoch: np.random.default_rng([3, epoch])  # noqa: E731
    assert len(copies(10, 2.5, rng(0))) == 25
    halves = [tuple(copies(10, 0.5, rng(epoch))) for epoch in range(4)]
    assert len(set(halves)) > 1 and all(len(set(h)) == 5 for h in halves)
    assert tuple(copies(10, 0.5, rng(2))) == halves[2]


def test_mix_resegments_every_epoch_as_a_function_of_the_epoch(tokenizer):
    sampling = (alpha_of(tokenizer), -1)
    mix = make_mix(tokenizer, sampling)
    epochs = [mix.dataset(epoch).src_ids for epoch in range(2)]
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(*epochs))
    again = make_mix(tokenizer, sampling).dataset(1).src_ids
    assert all(np.array_equal(a, b) for a, b in zip(again, epochs[1]))
    texts = tokenizer.decode([ids[1:] if ids[0] == tokenizer.piece_id("<bt>") else ids for ids in epochs[1]])
    assert sorted(texts) == sorted(DE)


def test_mix_iterator_resumes_exactly_across_epochs(tokenizer):
    def iterator():
        return MixBatchIterator(make_mix(tokenizer, (alpha_of(tokenizer), -1)), max_tokens=120, seed=5)

    whole = iterator()
    batches = [next(whole) for _ in range(12)]
    assert len({b.epoch for b in batches}) > 1
    first = iterator()
    for _ in range(5):
        next(first)
    resumed = iterator()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for expected in batches[5:]:
        got = next(resumed)
        assert (got.epoch, got.batch_index) == (expected.epoch, expected.batch_index)
        assert np.array_equal(got.src, expected.src) and np.array_equal(got.tgt_out, expected.tgt_out)


@pytest.fixture(scope="module")
def synthetic_tsv(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.tsv"
    path.write_text("".join(f"{de}\t{en}\n" for de, en in zip(DE[::-1], EN[::-1])), encoding="utf-8")
    return path


def mixed_run_args(run_dir, synthetic_tsv, *overrides, resume=False):
    corpora = f'data.train_corpora=[{{tsv_path="{synthetic_tsv}", weight=0.5, tag=true}}]'
    return train_args(
        run_dir,
        "tokenizer.sample_alpha=0.5",
        "tokenizer.user_defined_symbols=['<bt>']",
        'data.tag="<bt>"',
        corpora,
        *overrides,
        resume=resume,
    )


def test_run_with_sampling_and_a_mix_resumes_bit_exactly(tmp_path, synthetic_tsv):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_cli(mixed_run_args(whole, synthetic_tsv, f"train.max_steps={STEPS}"))
    run_cli(mixed_run_args(split, synthetic_tsv, "train.max_steps=3"))
    run_cli(mixed_run_args(split, synthetic_tsv, f"train.max_steps={STEPS}", resume=True))
    assert_bit_identical(final_state(whole, STEPS), final_state(split, STEPS))
    assert final_state(whole, STEPS)["train_state"]["data"]["epoch"] >= 1  # the resume crossed re-segmented epochs


def test_resume_accepts_the_same_corpus_named_relatively_and_refuses_another(
    tmp_path, synthetic_tsv, capsys, monkeypatch
):
    run = tmp_path / "run"
    run_cli(mixed_run_args(run, synthetic_tsv, "train.max_steps=2"))
    monkeypatch.chdir(synthetic_tsv.parent)  # the recorded path is absolute; the command line names it relatively
    run_cli(mixed_run_args(run, Path(synthetic_tsv.name), "train.max_steps=3", resume=True))
    other = tmp_path / "other.tsv"
    other.write_text(synthetic_tsv.read_text(encoding="utf-8"), encoding="utf-8")
    refused(mixed_run_args(run, other, "train.max_steps=4", resume=True), capsys, "data.train_corpora cannot change")


def test_a_tag_missing_from_the_tokenizer_is_refused(tmp_path, synthetic_tsv, capsys):
    args = mixed_run_args(tmp_path, synthetic_tsv, "tokenizer.user_defined_symbols=[]", "train.max_steps=1")
    refused([str(a) for a in args], capsys, "user_defined_symbols")


# ------------------------------------------------------------------------------------------------ back-translation
@pytest.fixture(scope="module")
def reverse_model(tmp_path_factory):
    tok, _ = train_sentencepiece(EN, DE, tmp_path_factory.mktemp("reverse"), vocab_size=320)
    config = TransformerConfig(
        src_vocab_size=tok.vocab_size,
        tgt_vocab_size=tok.vocab_size,
        d_model=16,
        n_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        d_ff=32,
        max_len=24,  # an untrained model rarely ends a sentence: a short limit keeps the test fast
        seed=0,
    )
    return Transformer(config).eval(), tok


@pytest.mark.parametrize("options", [dict(beam=2), dict(beam=1, sample=True, top_k=5), dict(beam=2, noise=True)])
def test_backtranslation_keeps_line_count_and_order(reverse_model, tmp_path, options):
    model, tok = reverse_model
    out = tmp_path / "synthetic.tsv"
    summary = backtranslate(model, tok, tok, EN, out, chunk=7, max_tokens=400, **options)
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(EN) == summary["lines"]
    assert [line.split("\t")[1] for line in lines[:-1]] == EN


def test_interrupted_backtranslation_restarts_cleanly(reverse_model, tmp_path):
    model, tok = reverse_model
    options = dict(chunk=6, max_tokens=400, beam=1, sample=True, seed=4)
    whole = tmp_path / "whole.tsv"
    backtranslate(model, tok, tok, EN, whole, **options)
    expected = whole.read_bytes()
    # An interruption inside the third chunk's write: two complete chunks and half a line.
    cut = tmp_path / "cut.tsv"
    complete = b"".join(expected.split(b"\n")[i] + b"\n" for i in range(12))
    cut.write_bytes(complete + expected[len(complete) : len(complete) + 9])
    assert completed_lines(cut, EN) == 12 and cut.read_bytes() == complete
    cut.write_bytes(complete + expected[len(complete) : len(complete) + 9])
    summary = backtranslate(model, tok, tok, EN, cut, resume=True, **options)
    assert summary["resumed_after"] == 12 and cut.read_bytes() == expected
    # A finished output resumes to itself; another input's output is refused.
    assert backtranslate(model, tok, tok, EN, cut, resume=True, **options)["written_now"] == 0
    with pytest.raises(BacktranslationError, match="line 1 is not the back-translation"):
        backtranslate(model, tok, tok, DE, cut, resume=True, **options)


def test_noise_keeps_words_local():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    noised = noise_words(" ".join(words), rng).split()
    assert 20 < len(noised) <= 40 and noised != words
    positions = [words.index(w) for w in noised if w in words]
    assert all(b > a - 3 for a, b in zip(positions, positions[1:]))


def test_bad_monolingual_lines_are_named(tmp_path):
    data = "a good line\n\nanother\n\xff-bad\n   \nlast\n".encode("utf-8").replace("\xff".encode("utf-8"), b"\xff")
    with pytest.raises(BacktranslationError) as error:
        read_monolingual(data, "mono.en")
    message = str(error.value)
    assert "invalid UTF-8: 1 (line 4)" in message and "empty or whitespace-only: 2 (lines 2, 5)" in message
    sentences, lines = read_monolingual(data, "mono.en", skip_bad=True)
    assert sentences == ["a good line", "another", "last"] and lines == [1, 3, 6]


def test_reverse_model_of_the_wrong_direction_is_refused():
    check_direction(("en", "de"), "en-de", "runs/rev")
    with pytest.raises(BacktranslationError, match="translates de->en, not en->de"):
        check_direction(("de", "en"), "en-de", "runs/rev")
    with pytest.raises(BacktranslationError, match="SRC-TGT"):
        check_direction(("en", "de"), "ende", "runs/rev")


def test_backtranslate_command_refuses_the_wrong_direction_and_an_existing_output(tmp_path, capsys):
    run_dir = tmp_path / "rev"
    swapped = [f"data.src_path={FIXTURES / 'tiny.en'}", f"data.tgt_path={FIXTURES / 'tiny.de'}"]
    run_cli(train_args(run_dir, "train.max_steps=1", "data.src=en", "data.tgt=de", *swapped))
    mono = tmp_path / "mono.en"
    mono.write_text("".join(line + "\n" for line in EN[:3]), encoding="utf-8")
    out = tmp_path / "synthetic.tsv"
    base = ["backtranslate", "--checkpoint", str(run_dir), "--input", str(mono), "--output", str(out)]
    refused(base + ["--direction", "de-en"], capsys, "translates en->de, not de->en")
    assert cli.main(base + ["--direction", "en-de", "--beam", "1"]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == 3
    refused(base + ["--direction", "en-de"], capsys, "--resume continues it")
    assert cli.main(base + ["--direction", "en-de", "--beam", "1", "--resume"]) == 0


# ------------------------------------------------------------------------------------------------ review fixes
def task_of(run_dir, *overrides):
    """The translation task a ``train`` command line would build (tokenizer trained in ``run_dir``)."""
    from transformer.config import load_config
    from transformer.tasks import TranslationTask
    from transformer.train import train_settings

    args = cli.build_parser().parse_args([str(a) for a in train_args(run_dir, *overrides)])
    config = cli._absolute_paths(load_config(args.config, args.overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    return TranslationTask(config, run_dir, train_settings(config["train"], "translation"))


def test_validation_keeps_the_deterministic_segmentation_when_training_samples(tmp_path):
    plain = task_of(tmp_path / "plain")
    sampled = task_of(tmp_path / "sampled", "tokenizer.sample_alpha=0.5")
    tokens = lambda dataset: [ids.tolist() for ids in dataset.src_ids] + [ids.tolist() for ids in dataset.tgt_ids]  # noqa: E731
    assert tokens(sampled.valid_set) == tokens(plain.valid_set)
    assert tokens(sampled.batches.mix.dataset(1)) != tokens(
        plain.train_set
    )  # (while training sentences are re-segmented)


def test_mix_keeps_examples_that_share_a_file_line_apart(tokenizer):
    # A dialogue's turns are several examples of one file line: each must keep its own text when re-segmented.
    pairs = ParallelText(DE[:3], EN[:3], "de", "en", [1, 1, 2])
    mix = TrainingMix([TrainingPart("turns", pairs)], tokenizer, tokenizer, seed=0, max_len=200, sampling=(0.5, -1))
    dataset = mix.dataset(1)
    assert tokenizer.decode(dataset.src_ids) == DE[:3] and tokenizer.decode(dataset.tgt_ids) == EN[:3]


@pytest.mark.parametrize(
    "entry, fragment",
    [
        ({"src_path": "a.de"}, "needs tsv_path, or src_path and tgt_path"),
        ({"tsv_path": "a.tsv", "src_path": "a.de"}, "not both"),
        ({"tsv_path": "a.tsv", "weight": 0}, "weight"),
        ({"tsv_path": "a.tsv", "colour": 1}, "colour"),
        ({"tsv_path": "a.tsv", "tag": "yes"}, "tag must be true or false"),
    ],
)
def test_corpus_entries_are_checked(entry, fragment):
    from transformer.datasets import ValidationOptions
    from transformer.mixing import load_training_corpora

    with pytest.raises(ConfigError, match=fragment):
        load_training_corpora([entry], src_lang="de", tgt_lang="en", validation=ValidationOptions())


def test_corpus_given_as_two_aligned_files_joins_the_mix(tmp_path, tokenizer):
    from transformer.datasets import ValidationOptions
    from transformer.mixing import load_training_corpora

    (tmp_path / "s.de").write_text("\n".join(DE[:4]) + "\n", encoding="utf-8")
    (tmp_path / "s.en").write_text("\n".join(EN[:4]) + "\n", encoding="utf-8")
    entry = {"src_path": str(tmp_path / "s.de"), "tgt_path": str(tmp_path / "s.en"), "weight": 2}
    (part,) = load_training_corpora([entry], src_lang="de", tgt_lang="en", validation=ValidationOptions())
    assert part.pairs.src == DE[:4] and part.weight == 2
    mix = TrainingMix([part], tokenizer, tokenizer, seed=0, max_len=200)
    assert tokenizer.decode(mix.dataset(0).tgt_ids) == EN[:4] * 2


def test_resume_with_other_decoding_settings_is_refused(reverse_model, tmp_path):
    model, tok = reverse_model
    out = tmp_path / "synthetic.tsv"
    options = dict(chunk=6, max_tokens=400, beam=1, identity={"checkpoint": "rev", "direction": "en-de"})
    backtranslate(model, tok, tok, EN[:6], out, **options)
    recorded = json.loads((tmp_path / "synthetic.tsv.settings.json").read_text(encoding="utf-8"))
    assert recorded["checkpoint"] == "rev" and recorded["beam"] == 1 and recorded["sample"] is False
    for changed in (dict(sample=True, seed=3), dict(identity={"checkpoint": "other", "direction": "en-de"})):
        with pytest.raises(BacktranslationError, match="was started with other settings"):
            backtranslate(model, tok, tok, EN, out, resume=True, **{**options, **changed})
    assert backtranslate(model, tok, tok, EN, out, resume=True, **options)["resumed_after"] == 6


def test_backtranslate_command_refuses_input_as_output_and_top_k_without_sampling(tmp_path, capsys):
    mono = tmp_path / "mono.en"
    mono.write_text("a sentence\n", encoding="utf-8")
    base = ["backtranslate", "--checkpoint", str(tmp_path / "none"), "--direction", "en-de", "--input", str(mono)]
    refused(base + ["--output", str(mono), "--overwrite"], capsys, "is the --input file")
    refused(base + ["--output", str(tmp_path / "out.tsv"), "--top-k", "5"], capsys, "add --sample")
    assert mono.read_text(encoding="utf-8") == "a sentence\n"


def test_resume_that_changes_the_sampling_says_so(tmp_path, synthetic_tsv, capsys):
    run = tmp_path / "run"
    run_cli(mixed_run_args(run, synthetic_tsv, "train.max_steps=2"))
    capsys.readouterr()
    run_cli(mixed_run_args(run, synthetic_tsv, "train.max_steps=3", "tokenizer.sample_alpha=0.2", resume=True))
    assert "tokenizer.sample_alpha changes from 0.5 to 0.2" in capsys.readouterr().err
