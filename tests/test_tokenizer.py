"""SentencePiece and character tokenizers (transformer.tokenizer)."""

import json
from pathlib import Path

import pytest

from transformer import tokenizer as T

FIXTURES = Path(__file__).parent / "fixtures"
DE = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()
EN = (FIXTURES / "tiny.en").read_text(encoding="utf-8").splitlines()
# byte_fallback reserves 256 byte pieces + 4 specials; a tiny corpus gets a few dozen more.
SMALL_VOCAB = 320


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("spm_joint")
    source, target = T.train_sentencepiece(DE, EN, directory, vocab_size=SMALL_VOCAB, model_type="unigram")
    return directory, source, target


def test_special_ids_are_fixed(joint):
    _, source, _ = joint
    assert (source.pad_id, source.unk_id, source.bos_id, source.eos_id) == (0, 1, 2, 3)
    assert [source.processor.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_round_trip_and_no_unknowns_thanks_to_byte_fallback(tmp_path, model_type):
    source, _ = T.train_sentencepiece(DE + EN, None, tmp_path, vocab_size=SMALL_VOCAB, model_type=model_type)
    unseen = ["Ein Känguru 🦘 isst 寿司 — ça va?", "Zwei Hunde spielen im Schnee."]
    ids = source.encode(unseen)
    assert all(isinstance(i, int) for seq in ids for i in seq)
    assert T.UNK_ID not in {i for seq in ids for i in seq}  # unseen characters spelled as UTF-8 bytes
    assert source.decode(ids) == unseen
    assert source.decode(source.encode(DE)) == DE
    assert json.loads((tmp_path / "tokenizer.json").read_text())["src"]["model_type"] == model_type


def test_encode_has_no_specials_and_decode_stops_at_eos(joint):
    _, source, _ = joint
    (ids,) = source.encode(["Ein Hund"])
    assert not {0, 2, 3} & set(ids)
    assert source.decode([[2] + ids + [3] + ids + [0, 0]]) == ["Ein Hund"]
    assert source.decode([[]]) == [""]


def test_decode_rejects_ids_outside_vocabulary(joint):
    _, source, _ = joint
    with pytest.raises(T.TokenizerError, match=r"id 100000 at position 1 of sequence 0.*\[0, "):
        source.decode([[5, 100000]])


def test_encode_wants_a_list(joint):
    _, source, _ = joint
    with pytest.raises(TypeError, match="wrap it"):
        source.encode("Ein Hund")


def test_saved_and_loaded_tokenizers_agree_and_record_settings(joint, tmp_path):
    directory, source, target = joint
    assert source is target
    metadata = json.loads((directory / "tokenizer.json").read_text())
    assert metadata["joint"] is True
    entry = metadata["src"]
    assert entry["normalization_rule"] == "nmt_nfkc" and entry["byte_fallback"] is True
    assert (entry["pad_id"], entry["unk_id"], entry["bos_id"], entry["eos_id"]) == (0, 1, 2, 3)
    assert entry["vocab_size"] == source.vocab_size
    T.save_tokenizers(source, target, tmp_path / "checkpoint")
    assert {p.name for p in (tmp_path / "checkpoint").iterdir()} == {"spm.model", "spm.vocab", "tokenizer.json"}
    loaded_src, loaded_tgt = T.load_tokenizers(tmp_path / "checkpoint")
    assert loaded_src is loaded_tgt
    assert loaded_src.encode(DE) == source.encode(DE)
    assert loaded_src.config() == source.config()


def test_separate_vocabularies(tmp_path):
    source, target = T.train_sentencepiece(DE, EN, tmp_path, joint=False, vocab_size=SMALL_VOCAB, model_type="bpe")
    assert source is not target
    assert {"src.model", "tgt.model", "src.vocab", "tgt.vocab"} <= {p.name for p in tmp_path.iterdir()}
    source_pieces = {source.processor.id_to_piece(i) for i in range(source.vocab_size)}
    target_pieces = {target.processor.id_to_piece(i) for i in range(target.vocab_size)}
    assert "ß" in source_pieces and "ß" not in target_pieces  # each side has its own vocabulary
    loaded_src, loaded_tgt = T.load_tokenizers(tmp_path)
    assert loaded_src.encode(DE) == source.encode(DE) and loaded_tgt.encode(EN) == target.encode(EN)
    assert loaded_tgt.decode(loaded_tgt.encode(EN)) == EN


def test_training_is_deterministic(tmp_path):
    T.train_sentencepiece(DE, EN, tmp_path / "a", vocab_size=SMALL_VOCAB, seed=1)
    T.train_sentencepiece(DE, EN, tmp_path / "b", vocab_size=SMALL_VOCAB, seed=1)
    assert (tmp_path / "a" / "spm.model").read_bytes() == (tmp_path / "b" / "spm.model").read_bytes()


def test_training_errors(tmp_path):
    with pytest.raises(ValueError, match="model_type"):
        T.train_sentencepiece(DE, EN, tmp_path, model_type="wordpiece")
    with pytest.raises(T.TokenizerError, match="no non-empty training sentences"):
        T.train_sentencepiece(["", "  "], None, tmp_path)
    with pytest.raises(T.TokenizerError, match="does not exist"):
        T.load_tokenizers(tmp_path / "nowhere")
    bogus = tmp_path / "bogus.model"
    bogus.write_bytes(b"definitely not a protobuf")
    with pytest.raises(T.TokenizerError, match="not a SentencePiece model"):
        T.SentencePieceTokenizer(bogus)


# ---------------------------------------------------------------------------------------------------------------
# Character tokenizer
# ---------------------------------------------------------------------------------------------------------------


def test_char_tokenizer_vocab_round_trip_and_json(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tokenizer = T.CharTokenizer.from_text(text)
    assert tokenizer.vocab_size == len(set(text))
    assert tokenizer.chars == sorted(set(text))
    (ids,) = tokenizer.encode([text])
    assert tokenizer.decode([ids]) == [text] and tokenizer.decode_ids(ids) == text
    tokenizer.save(tmp_path)
    loaded = T.CharTokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.chars == tokenizer.chars
    source, target = T.load_tokenizers(tmp_path)
    assert source is target and source.encode(["hear me"]) == tokenizer.encode(["hear me"])


def test_char_tokenizer_unknown_character_names_it_and_its_position():
    tokenizer = T.CharTokenizer.from_text("abc ")
    with pytest.raises(T.TokenizerError, match=r"text 1: character 'é' \(U\+00E9\) at position 2"):
        tokenizer.encode(["abc", "caé"])
    with pytest.raises(T.TokenizerError, match="outside the vocabulary"):
        tokenizer.decode([[0, 4]])


def test_char_tokenizer_needs_text():
    with pytest.raises(T.TokenizerError, match="empty text"):
        T.CharTokenizer.from_text("")
