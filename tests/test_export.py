"""Export to transformers (MarianMTModel, GPT-2) and CTranslate2, and import back (transformer/export_hf.py, export_ct2.py).

Properties: npgrad -> HF -> npgrad gives identical weights and config; the HF model's logits equal ours (float32
rounding) for every option that maps; an option that does not map is refused by name; CTranslate2's and HF's greedy
outputs equal npgrad's token for token. The libraries are the 'export' extra: those tests skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from transformer import search
from transformer.checkpoint import load_checkpoint, save_checkpoint
from transformer.cli import main
from transformer.export_hf import ExportError, export_hf, import_hf, marian_permutation, to_gpt2, to_marian
from transformer.model import LanguageModel, LMConfig, Transformer, TransformerConfig
from transformer.positional import sinusoidal_table

FIXTURES = Path(__file__).parent / "fixtures"
DE = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()
EN = (FIXTURES / "tiny.en").read_text(encoding="utf-8").splitlines()
VOCAB = 320  # byte_fallback's 256 bytes + 4 specials + the tiny corpus's pieces


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from transformer.tokenizer import train_sentencepiece

    directory = tmp_path_factory.mktemp("spm")
    train_sentencepiece(DE, EN, directory, vocab_size=VOCAB, num_threads=1)
    return directory


def _perturbed(model, seed=0, scale=0.3):
    """Random weights of a visible size (layer norms and biases too), so that every mapped tensor matters."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += rng.normal(0.0, scale, p.data.shape).astype(p.data.dtype)
    model.eval()
    return model


def _seq2seq(**overrides):
    settings = dict(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=16, n_heads=2, num_encoder_layers=2)
    settings.update(num_decoder_layers=2, d_ff=24, max_len=40, share_embeddings=True, seed=1)
    settings.update(overrides)
    return _perturbed(Transformer(TransformerConfig(**settings)))


def _lm(**overrides):
    settings = dict(vocab_size=50, d_model=16, n_heads=2, n_layers=2, d_ff=24, block_size=24, seed=2)
    settings.update(overrides)
    return _perturbed(LanguageModel(LMConfig(**settings)))


def _save(model, directory, tokenizer_dir=None):
    extra = {}
    if tokenizer_dir is not None:
        extra = {p.name: p for p in Path(tokenizer_dir).iterdir() if p.is_file()}
    return save_checkpoint(directory, model, model.config, extra_files=extra)


def _sources(rng, n=4, vocab=VOCAB):
    src = rng.integers(4, vocab, size=(n, 9))
    src[:, -1] = 3  # EOS ends a source, as our batching writes it
    src[1, 6:] = 0  # padding
    src[1, 5] = 3
    return src


SEQ2SEQ_OPTIONS = [
    dict(),
    dict(activation="gelu"),
    dict(share_embeddings=False, tie_output=False),
    dict(share_embeddings=False, src_vocab_size=300),
    dict(d_model=9, n_heads=3),  # odd width: Marian's sine half is one column wider than its cosine half
]


def test_marian_permutation_turns_our_table_into_marians():
    for width in (8, 9):
        ours = sinusoidal_table(12, width)
        angles = np.arange(12)[:, None] / np.power(10000.0, 2 * (np.arange(width) // 2) / width)
        marian = np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], axis=1)  # their create_weight
        np.testing.assert_allclose(ours[:, marian_permutation(width)], marian, atol=1e-12)


@pytest.mark.parametrize("options", SEQ2SEQ_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "base")
def test_marian_round_trip_and_logits(tmp_path, options):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    model = _seq2seq(**options)
    checkpoint = _save(model, tmp_path / "ckpt")
    export_hf(checkpoint, tmp_path / "hf")
    back, _ = import_hf(tmp_path / "hf", tmp_path / "back")
    original, restored = load_checkpoint(checkpoint), load_checkpoint(back)
    assert restored.config == original.config
    assert list(restored.model_state) == list(original.model_state)
    for name, value in original.model_state.items():
        assert restored.model_state[name].dtype == value.dtype
        np.testing.assert_array_equal(restored.model_state[name], value, err_msg=name)

    hf = transformers.MarianMTModel.from_pretrained(str(tmp_path / "hf")).eval()
    rng = np.random.default_rng(5)
    src = _sources(rng, vocab=model.config.src_vocab_size)
    tgt = np.concatenate([np.full((4, 1), 2), rng.integers(4, VOCAB, size=(4, 6))], axis=1)
    ours = model(src, tgt).data
    with torch.no_grad():
        theirs = hf(
            input_ids=torch.tensor(src), attention_mask=torch.tensor(src != 0), decoder_input_ids=torch.tensor(tgt)
        ).logits.numpy()
    real = (src != 0).any(axis=1)
    assert np.abs(ours[real] - theirs[real]).max() < 2e-5 * max(1.0, np.abs(ours).max())


@pytest.mark.parametrize(
    "options",
    [dict(), dict(activation="relu", positional="sinusoidal", tie_output=False, bias=False)],
    ids=["learned,gelu,tied", "sinusoidal,relu,untied,no-bias"],
)
def test_gpt2_round_trip_and_logits(tmp_path, options):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(1)
    model = _lm(**options)
    checkpoint = _save(model, tmp_path / "ckpt")
    export_hf(checkpoint, tmp_path / "hf")
    back, _ = import_hf(tmp_path / "hf", tmp_path / "back")
    original, restored = load_checkpoint(checkpoint), load_checkpoint(back)
    assert restored.config == original.config
    assert sorted(restored.model_state) == sorted(original.model_state)
    for name, value in original.model_state.items():
        np.testing.assert_array_equal(restored.model_state[name], value, err_msg=name)

    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    ids = np.random.default_rng(6).integers(0, 50, size=(3, 24))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(ids)).logits.numpy()
    ours = model(ids).data
    assert np.abs(ours - theirs).max() < 2e-5 * max(1.0, np.abs(ours).max())


REFUSED = [
    (_seq2seq, dict(positional="relative"), "marian", "positional=relative"),
    (_seq2seq, dict(positional="rope"), "marian", "positional=rope"),
    (_seq2seq, dict(positional="alibi"), "marian", "positional=alibi"),
    (_seq2seq, dict(positional="learned"), "marian", "positional=learned"),
    (_seq2seq, dict(norm_first=True), "marian", "norm_first=true"),
    (_lm, dict(norm_first=False), "gpt2", "norm_first=false"),
    (_lm, dict(positional="rope"), "gpt2", "positional=rope"),
]


@pytest.mark.parametrize("make, options, target, message", REFUSED, ids=[r[3] for r in REFUSED])
def test_options_that_do_not_map_are_refused_by_name(make, options, target, message):
    model = make(**options)
    state = {name: np.asarray(p) for name, p in model.state_dict().items()}
    with pytest.raises(ExportError, match=message):
        (to_marian if target == "marian" else to_gpt2)(model.config.to_dict(), state)


def test_cli_export_refusal_is_one_line(tmp_path, capsys):
    checkpoint = _save(_seq2seq(norm_first=True), tmp_path / "ckpt")
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--output", str(tmp_path / "hf")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: norm_first=true (pre-LN): MarianMTModel") and "\n" not in error
    assert not (tmp_path / "hf").exists()


def test_cli_export_and_import_round_trip(tmp_path, tokenizer_dir):
    pytest.importorskip("safetensors")
    checkpoint = _save(_seq2seq(), tmp_path / "ckpt", tokenizer_dir)
    out = tmp_path / "hf"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--output", str(out)]) == 0
    assert {"config.json", "model.safetensors", "source.spm", "vocab.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--output", str(out)]) == 2  # exists
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--output", str(out), "--overwrite"]) == 0
    back = tmp_path / "back"
    assert main(["import", "--format", "hf", "--model", str(out), "--output", str(back)]) == 0
    restored = load_checkpoint(back)
    assert {"spm.model", "tokenizer.json"} <= set(restored.extra_files)
    for name, value in load_checkpoint(checkpoint).model_state.items():
        np.testing.assert_array_equal(restored.model_state[name], value)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<pad>"] == 0 and vocab["</s>"] == 3 and len(vocab) == VOCAB


def _greedy_ids(model, src):
    """Our greedy tokens per sentence and each sentence's length limit (max_len_a 1.5, max_len_b 10, as translate)."""
    result = search.greedy(model, src, max_len=model.config.max_len - 1, max_len_a=1.5, max_len_b=10)
    src_len = (src != 0).sum(axis=1)
    limits = np.minimum(np.floor(1.5 * src_len + 10).astype(int), model.config.max_len - 1)
    return result.tokens, limits


def test_hf_generate_and_marian_tokenizer_match_npgrad(tmp_path, tokenizer_dir):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformer.tokenizer import load_tokenizers

    torch.set_num_threads(1)
    model = _seq2seq()
    export_hf(_save(model, tmp_path / "ckpt", tokenizer_dir), tmp_path / "hf")
    tokenizer = transformers.MarianTokenizer.from_pretrained(str(tmp_path / "hf"))
    source, _ = load_tokenizers(tokenizer_dir)
    batch = tokenizer(DE[:6], return_tensors="np", padding=True)
    ours_ids = [ids + [3] for ids in source.encode(DE[:6])]
    assert [list(row[mask.astype(bool)]) for row, mask in zip(batch["input_ids"], batch["attention_mask"])] == ours_ids

    src = np.asarray(batch["input_ids"], dtype=np.int64)
    hf = transformers.MarianMTModel.from_pretrained(str(tmp_path / "hf")).eval()
    tokens, limits = _greedy_ids(model, src)
    with torch.no_grad():
        generated = hf.generate(
            input_ids=torch.tensor(src), attention_mask=torch.tensor(src != 0), max_length=int(limits.max()) + 1
        ).numpy()
    for row, (ours, limit) in enumerate(zip(tokens, limits)):
        theirs = [int(t) for t in generated[row, 1:]]  # drop the decoder start
        theirs = theirs[: theirs.index(3)] if 3 in theirs else theirs
        assert theirs[:limit] == ours, row


def test_ctranslate2_greedy_matches_npgrad(tmp_path, tokenizer_dir):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformer.export_ct2 import export_ct2
    from transformer.tokenizer import load_tokenizers

    source, target = load_tokenizers(tokenizer_dir)
    for options in (dict(), dict(norm_first=True, positional="learned", activation="gelu", tie_output=False)):
        model = _seq2seq(**options)
        out = export_ct2(_save(model, tmp_path / f"ckpt{len(options)}", tokenizer_dir), tmp_path / f"ct2{len(options)}")
        ids = source.encode(DE[:8])
        src = np.zeros((len(ids), max(map(len, ids)) + 1), dtype=np.int64)
        for row, sentence in enumerate(ids):
            src[row, : len(sentence) + 1] = sentence + [3]
        tokens, limits = _greedy_ids(model, src)
        translator = ctranslate2.Translator(str(out), inter_threads=1, intra_threads=1)
        pieces = [source.processor.encode(s, out_type=str) for s in DE[:8]]
        results = translator.translate_batch(pieces, beam_size=1, max_decoding_length=int(limits.max()))
        for row, (result, ours, limit) in enumerate(zip(results, tokens, limits)):
            theirs = [target.processor.piece_to_id(p) for p in result.hypotheses[0]]
            assert theirs[:limit] == ours, (options, row)


def test_ctranslate2_language_model_matches_npgrad_logits(tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformer.export_ct2 import export_ct2
    from transformer.tokenizer import CharTokenizer

    text = "the quick brown fox jumps over the lazy dog. " * 3
    chars = CharTokenizer.from_text(text)
    chars.save(tmp_path / "tok")
    model = _lm(vocab_size=chars.vocab_size)
    out = export_ct2(_save(model, tmp_path / "ckpt", tmp_path / "tok"), tmp_path / "ct2")
    generator = ctranslate2.Generator(str(out), inter_threads=1, intra_threads=1)
    ids = chars.encode_text(text[:20])
    theirs = np.asarray(generator.forward_batch([[chars.chars[i] for i in ids]]))  # (1, T, V)
    ours = model(np.asarray([ids])).data
    assert np.abs(ours - theirs).max() < 2e-4 * max(1.0, np.abs(ours).max())
