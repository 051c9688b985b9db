"""Data loading, validation, batching and LM windows (transformer.datasets / transformer.data)."""

import gzip
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer import data as D
from transformer import datasets as ds

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parent.parent


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_gz(path: Path, lines, newline_at_end=True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + ("\n" if newline_at_end else "")
    with gzip.open(path, "wb") as handle:
        handle.write(text.encode("utf-8"))
    return path


def no_network(url, destination):
    raise AssertionError(f"network used for {url}")


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def test_strip_is_reported_and_applied():
    src, tgt, report = D.validate_pairs([" a b ", "c"], ["x", "y\r"])
    assert src == ["a b", "c"] and tgt == ["x", "y"]
    assert report.stripped == 2 and report.kept == 2 and not report.dropped


BAD_CASES = [
    # (src, tgt, options, reason)
    (["ok", "   "], ["ok", "fine"], {}, D.REASON_EMPTY),
    (["ok", ""], ["ok", "fine"], {}, D.REASON_EMPTY),
    (["ok", "a " * 6], ["ok", "b " * 6], {"max_tokens": 5}, D.REASON_TOO_MANY_TOKENS),
    (["ok", "abcdefghijk"], ["ok", "x"], {"max_chars": 10}, D.REASON_TOO_MANY_CHARS),
    (["ok", "a"], ["ok", "b " * 10], {"max_ratio": 9.0}, D.REASON_LENGTH_RATIO),
    (["ok", None], ["ok", "x"], {}, D.REASON_INVALID_UTF8),
]


@pytest.mark.parametrize("src, tgt, options, reason", BAD_CASES)
def test_bad_pairs_error_names_reason_count_and_line(src, tgt, options, reason):
    with pytest.raises(D.DataValidationError) as info:
        D.validate_pairs(src, tgt, name="mycorpus", src_name="a.de", tgt_name="a.en", **options)
    message = str(info.value)
    assert reason in message and "line 2" in message and "1 of 2" in message
    assert "mycorpus" in message and "a.de" in message and "on_bad='filter'" in message


@pytest.mark.parametrize("src, tgt, options, reason", BAD_CASES)
def test_bad_pairs_filtered_and_reported(src, tgt, options, reason, caplog):
    with caplog.at_level("WARNING", logger="transformer.data"):
        kept_src, kept_tgt, report = D.validate_pairs(src, tgt, on_bad="filter", **options)
    assert kept_src == ["ok"] and kept_tgt == ["ok"]
    assert report.dropped == {reason: [2]} and report.kept == 1 and report.total == 2
    assert reason in report.summary() and reason in caplog.text  # logged, not silent


def test_on_bad_must_be_known():
    with pytest.raises(ValueError, match="on_bad"):
        D.validate_pairs(["a"], ["b"], on_bad="ignore")


line_text = st.one_of(st.just(""), st.just("   "), st.text(alphabet="ab \t", max_size=30), st.none())


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(line_text, line_text), max_size=20))
def test_filter_accounts_for_every_pair(pairs):
    """kept + dropped == total; kept pairs are stripped, non-empty and within the limits; nothing silently lost."""
    src = [s for s, _ in pairs]
    tgt = [t for _, t in pairs]
    kept_src, kept_tgt, report = D.validate_pairs(src, tgt, on_bad="filter", max_tokens=6, max_ratio=3.0)
    assert report.kept + report.num_dropped == report.total == len(pairs)
    assert len(kept_src) == len(kept_tgt) == report.kept
    all_lines = sorted(n for lines in report.dropped.values() for n in lines)
    assert len(set(all_lines)) == len(all_lines)  # each pair counted under one reason only
    for s, t in zip(kept_src, kept_tgt):
        assert s == s.strip() and s and t == t.strip() and t
        assert max(len(s.split()), len(t.split())) <= 6


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    src = write_gz(tmp_path / "a.de.gz", ["eins", "zwei", "drei"])
    tgt = write_gz(tmp_path / "a.en.gz", ["one", "two"])
    with pytest.raises(D.DataValidationError) as info:
        ds.load_parallel_files(src, tgt)
    message = str(info.value)
    assert "a.de.gz has 3 lines" in message and "a.en.gz has 2 lines" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    src = tmp_path / "bad.de"
    src.write_bytes(b"gut\nauch gut\nkaputt \xff\xfe hier\n")
    tgt = tmp_path / "bad.en"
    tgt.write_text("good\nalso good\nbroken here\n", encoding="utf-8")
    with pytest.raises(ds.TextDecodeError, match=r"bad\.de: line 3 is not valid UTF-8"):
        ds.load_parallel_files(src, tgt)
    pairs, report = ds.load_parallel_files(src, tgt, validation=ds.ValidationOptions(on_bad="filter"))
    assert pairs.src == ["gut", "auch gut"] and report.dropped == {D.REASON_INVALID_UTF8: [3]}


def test_read_lines_newlines_bom_and_crlf(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"\xef\xbb\xbfa\r\nb\n\nc")
    assert ds.read_lines(path) == ["a\r", "b", "", "c"]  # no phantom last line; \r is left for stripping
    path.write_bytes(b"a\nb\n")
    assert ds.read_lines(path) == ["a", "b"]


def test_tsv_columns_extra_columns_and_malformed_lines(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("Hi.\tHallo!\tCC-BY 2.0 (France) Attribution\nno tab here\nRun!\tLauf!\n", encoding="utf-8")
    with pytest.raises(D.DataValidationError, match="malformed.*line 2"):
        ds.load_tsv(path)
    pairs, report = ds.load_tsv(path, src_column=1, tgt_column=0, validation=ds.ValidationOptions(on_bad="filter"))
    assert pairs.src == ["Hallo!", "Lauf!"] and pairs.tgt == ["Hi.", "Run!"]
    assert report.dropped == {D.REASON_MALFORMED: [2]}


# ---------------------------------------------------------------------------------------------------------------
# The cache: fetch, checksums, no network when filled
# ---------------------------------------------------------------------------------------------------------------


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "env"))
    assert ds.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert ds.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv(ds.DATA_DIR_ENV)
    assert ds.resolve_data_dir() == Path("~/.cache/transformer").expanduser()


def test_fetch_downloads_from_file_url_verifies_and_then_stays_offline(tmp_path):
    remote = tmp_path / "remote" / "thing.txt"
    remote.parent.mkdir()
    remote.write_bytes(b"payload\n")
    cache = tmp_path / "cache"
    path = ds.fetch("sub/thing.txt", remote.as_uri(), data_dir=cache, sha256=sha(remote))
    assert path == cache / "sub" / "thing.txt" and path.read_bytes() == b"payload\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["thing.txt"]  # no temporary left behind
    # Filled cache: the fetcher is never called.
    assert (
        ds.fetch(
            "sub/thing.txt", "https://unreachable.invalid/x", data_dir=cache, sha256=sha(remote), fetcher=no_network
        )
        == path
    )


def test_download_with_wrong_checksum_is_refused_and_leaves_nothing(tmp_path):
    def fetcher(url, destination):
        Path(destination).write_bytes(b"not what we expected")

    cache = tmp_path / "cache"
    with pytest.raises(ds.ChecksumError) as info:
        ds.fetch("f.gz", "https://example.invalid/f.gz", data_dir=cache, sha256="0" * 64, fetcher=fetcher)
    message = str(info.value)
    assert "0" * 64 in message and hashlib.sha256(b"not what we expected").hexdigest() in message
    assert "https://example.invalid/f.gz" in message
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_names_file_and_both_checksums(tmp_path):
    corrupt = tmp_path / "multi30k" / "val.en.gz"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"corrupted")
    with pytest.raises(ds.ChecksumError) as info:
        ds.fetch("multi30k/val.en.gz", "https://x.invalid/val.en.gz", data_dir=tmp_path, fetcher=no_network)
    message = str(info.value)
    assert str(corrupt) in message and ds.SHA256["multi30k/val.en.gz"] in message
    assert hashlib.sha256(b"corrupted").hexdigest() in message


def test_missing_file_without_network_is_a_clear_error(tmp_path):
    def offline(url, destination):
        raise OSError("Name or service not known")

    with pytest.raises(ds.DownloadError, match="not in the cache and downloading .* failed"):
        ds.fetch("tinyshakespeare/input.txt", "https://x.invalid/input.txt", data_dir=tmp_path, fetcher=offline)
    assert not (tmp_path / "tinyshakespeare" / "input.txt").exists()


def fake_multi30k(root: Path, monkeypatch, train_de=None):
    """A miniature Multi30k cache (with its sums registered) built from the fixture sentences."""
    de = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()
    en = (FIXTURES / "tiny.en").read_text(encoding="utf-8").splitlines()
    parts = {
        "train": (train_de or de[:20], en[:20]),
        "val": (de[20:25], en[20:25]),
        "test_2016_flickr": (de[25:], en[25:]),
    }
    remote = root / "remote"
    for split, (de_lines, en_lines) in parts.items():
        for lang, lines in (("de", de_lines), ("en", en_lines)):
            path = write_gz(remote / f"{split}.{lang}.gz", lines)
            monkeypatch.setitem(ds.SHA256, f"multi30k/{split}.{lang}.gz", sha(path))
    return remote.as_uri() + "/"


def test_multi30k_downloads_into_cache_then_loads_offline(tmp_path, monkeypatch):
    base_url = fake_multi30k(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    corpus = ds.load_multi30k("en", "de", data_dir=cache, base_url=base_url)
    assert [len(corpus[s]) for s in ("train", "valid", "test")] == [20, 5, 5]
    assert corpus["train"].src[0] == "A man is riding a red bicycle."
    assert corpus["train"].tgt[0] == "Ein Mann fährt ein rotes Fahrrad."
    assert sorted(p.name for p in (cache / "multi30k").iterdir()) == sorted(
        f"{s}.{lang}.gz" for s in ("train", "val", "test_2016_flickr") for lang in ("de", "en")
    )
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(cache))
    again = ds.load_multi30k("de", "en", fetcher=no_network)
    assert again["valid"].src == corpus["valid"].tgt


def test_multi30k_strips_stray_spaces_and_reports(tmp_path, monkeypatch):
    de = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()[:20]
    de[3] = de[3] + " "
    de[7] = "  " + de[7]
    base_url = fake_multi30k(tmp_path, monkeypatch, train_de=de)
    corpus = ds.load_multi30k(data_dir=tmp_path / "cache", base_url=base_url)
    assert corpus.reports["train"].stripped == 2 and corpus["train"].src[3] == de[3].strip()
    assert "stripped" in corpus.summary()


def test_multi30k_languages_checked():
    with pytest.raises(ValueError, match="Multi30k has languages"):
        ds.load_multi30k("de", "fr")


# ---------------------------------------------------------------------------------------------------------------
# Splits, Tatoeba, text
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=20, max_size=60).filter(
        lambda sources: len(set(sources)) >= 10
    ),
    st.integers(0, 3),
)
def test_split_is_a_seeded_partition_grouped_by_source(sources, seed):
    pairs = ds.ParallelText(sources, [f"{s}-{i}" for i, s in enumerate(sources)])
    splits = ds.split_corpus(pairs, valid_size=0.1, test_size=2, seed=seed)
    again = ds.split_corpus(pairs, valid_size=0.1, test_size=2, seed=seed)
    assert {k: v.tgt for k, v in splits.items()} == {k: v.tgt for k, v in again.items()}
    all_targets = sorted(t for part in splits.values() for t in part.tgt)
    assert all_targets == sorted(pairs.tgt)  # a partition: every pair exactly once
    train_sources = set(splits["train"].src)
    assert not train_sources & set(splits["test"].src) and not train_sources & set(splits["valid"].src)
    for part in splits.values():  # corpus order kept inside a split
        positions = [int(t.split("-")[1]) for t in part.tgt]
        assert positions == sorted(positions)


def test_split_sizes_must_leave_training_data():
    pairs = ds.ParallelText(list("abcd"), list("wxyz"))
    with pytest.raises(ValueError, match="non-empty train"):
        ds.split_corpus(pairs, valid_size=2, test_size=2)


def test_tatoeba_both_directions_from_zip(tmp_path, monkeypatch):
    lines = [f"English {i}.\tDeutsch {i}.\tCC-BY 2.0 #{i}" for i in range(50)] + ["Hi.\tHallo!", "Hi.\tGrüß Gott!"]
    archive = tmp_path / "tatoeba" / "deu-eng.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("deu.txt", "\n".join(lines) + "\n")
        zipped.writestr("_about.txt", "about")
    monkeypatch.setitem(ds.SHA256, "tatoeba/deu-eng.zip", sha(archive))
    en_de = ds.load_tatoeba("en", "de", data_dir=tmp_path, fetcher=no_network, valid_size=5, test_size=5, seed=1)
    de_en = ds.load_tatoeba("de", "en", data_dir=tmp_path, fetcher=no_network, valid_size=5, test_size=5, seed=1)
    assert sum(len(en_de[s]) for s in ("train", "valid", "test")) == 52
    pair = (en_de["train"].src[0], en_de["train"].tgt[0])
    assert pair[0].startswith("English") or pair[0] == "Hi."
    assert all(s.startswith(("Deutsch", "Hallo", "Grüß")) for s in de_en["train"].src)
    # "Hi." has two translations: grouped by source, both land in the same split.
    hi_splits = {name for name in ("train", "valid", "test") if "Hi." in en_de[name].src}
    assert len(hi_splits) == 1 and en_de[hi_splits.pop()].src.count("Hi.") == 2
    with pytest.raises(ValueError, match="English with one of"):
        ds.load_tatoeba("de", "fr", data_dir=tmp_path)


def test_generic_corpus_from_files_and_tsv(tmp_path):
    corpus = ds.load_parallel_corpus(
        src_path=FIXTURES / "tiny.de",
        tgt_path=FIXTURES / "tiny.en",
        valid_size=3,
        test_size=3,
        seed=0,
        src_lang="de",
        tgt_lang="en",
    )
    assert [len(corpus[s]) for s in ("train", "valid", "test")] == [24, 3, 3]
    tsv = tmp_path / "pairs.tsv"
    de = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()
    en = (FIXTURES / "tiny.en").read_text(encoding="utf-8").splitlines()
    tsv.write_text("".join(f"{e}\t{d}\n" for d, e in zip(de, en)), encoding="utf-8")
    from_tsv = ds.load_translation_corpus(
        "tsv", "de", "en", tsv_path=tsv, src_column=1, tgt_column=0, valid_size=3, test_size=3
    )
    assert {k: v.src for k, v in from_tsv.splits.items()} == {k: v.src for k, v in corpus.splits.items()}


def test_load_text_names_line_of_bad_utf8(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first\nsecond\nthird \xc3\x28\n")
    with pytest.raises(ds.TextDecodeError, match=r"corpus\.txt: line 3"):
        ds.load_text(path)


# ---------------------------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------------------------


def random_dataset(n=300, seed=0, max_len=30):
    rng = np.random.default_rng(seed)
    src = [rng.integers(4, 50, size=rng.integers(1, max_len)) for _ in range(n)]
    tgt = [rng.integers(4, 50, size=rng.integers(1, max_len)) for _ in range(n)]
    return D.TranslationDataset(src, tgt)


def test_source_only_batch_for_translation():
    batch = D.collate([[5, 6], [], [7]], None)
    assert batch.src.tolist() == [[5, 6, 3], [3, 0, 0], [7, 3, 0]]  # an empty line still has its EOS
    assert batch.tgt_in.shape == (3, 0) and batch.num_tgt_tokens == 0
    ids, lengths = D.pad_sequences([[1], [2, 3]], 0, length=4)
    assert ids.tolist() == [[1, 0, 0, 0], [2, 3, 0, 0]] and lengths.tolist() == [1, 2]
    with pytest.raises(ValueError, match="shorter than the longest"):
        D.pad_sequences([[1, 2, 3]], 0, length=2)


def test_collate_layout_and_masks():
    batch = D.collate([[5, 6, 7], [8]], [[9], [10, 11]], pad_id=0, bos_id=2, eos_id=3)
    assert batch.src.tolist() == [[5, 6, 7, 3], [8, 3, 0, 0]]
    assert batch.tgt_in.tolist() == [[2, 9, 0], [2, 10, 11]]
    assert batch.tgt_out.tolist() == [[9, 3, 0], [10, 11, 3]]
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == np.int64
    assert batch.src_mask.tolist() == (batch.src != 0).tolist() == D.mask_from_ids(batch.src).tolist()
    assert batch.tgt_mask.tolist() == (batch.tgt_out != 0).tolist()
    assert batch.num_tgt_tokens == 5
    masks = D.attention_masks(batch.src_mask, batch.tgt_mask)
    assert masks["encoder"].shape == (2, 1, 1, 4) and masks["decoder"].shape == (2, 1, 3, 3)
    assert masks["decoder"][0, 0, 2].tolist() == [True, True, False]  # causal and not the padded key
    assert masks["decoder"][1, 0].tolist() == D.causal_mask(3).tolist()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**16), st.sampled_from([64, 100, 256]), st.sampled_from([16, 1000]))
def test_each_epoch_covers_every_example_once_within_max_tokens(seed, max_tokens, chunk_size):
    dataset = random_dataset(120, seed=seed % 7)
    iterator = D.BatchIterator(dataset, max_tokens=max_tokens, seed=seed, chunk_size=chunk_size)
    seen = []
    for batch in iterator.epoch_batches():
        B, S = batch.src.shape
        T = batch.tgt_in.shape[1]
        assert B * max(S, T) <= max_tokens  # padded size, not just real tokens
        assert (batch.src_lengths == batch.src_mask.sum(1)).all()
        seen.extend(batch.indices.tolist())
    assert sorted(seen) == list(range(len(dataset)))
    assert iterator.state_dict()["epoch"] == 1 and iterator.state_dict()["batch_index"] == 0


def test_bucketing_reduces_padding_compared_with_random_batches():
    dataset = random_dataset(600, seed=3)
    iterator = D.BatchIterator(dataset, max_tokens=400, seed=0)
    padded = sum(b.tgt_in.size for b in iterator.epoch_batches())
    rng = np.random.default_rng(0)
    order = rng.permutation(len(dataset))
    unsorted = D.pack_batches(order, np.maximum(dataset.src_lengths, dataset.tgt_lengths), 400)
    padded_random = sum(len(b) * dataset.tgt_lengths[b].max() for b in unsorted)
    assert padded < 0.8 * padded_random


def test_order_is_a_pure_function_of_seed_and_epoch():
    dataset = random_dataset(200)
    first = D.BatchIterator(dataset, max_tokens=128, seed=5)
    second = D.BatchIterator(dataset, max_tokens=128, seed=5)
    epoch0 = [b.indices.tolist() for b in first.epoch_batches()]
    epoch1 = [b.indices.tolist() for b in first.epoch_batches()]
    assert epoch0 == [b.indices.tolist() for b in second.epoch_batches()]
    assert epoch0 != epoch1
    other_seed = [b.indices.tolist() for b in D.BatchIterator(dataset, max_tokens=128, seed=6).epoch_batches()]
    assert other_seed != epoch0
    # Jumping straight to epoch 1 gives the same batches as getting there by iterating.
    jumped = D.BatchIterator(dataset, max_tokens=128, seed=5, epoch=1)
    assert [b.indices.tolist() for b in jumped.epoch_batches()] == epoch1


def test_resume_from_state_dict_continues_exactly():
    dataset = random_dataset(60)
    uninterrupted = D.BatchIterator(dataset, max_tokens=100, seed=9)
    reference = [next(uninterrupted) for _ in range(40)]  # crosses epoch boundaries
    assert len({b.epoch for b in reference}) > 1
    killed = D.BatchIterator(dataset, max_tokens=100, seed=9)
    for _ in range(17):
        next(killed)
    state = dict(killed.state_dict())
    resumed = D.BatchIterator(dataset, max_tokens=100, seed=9)
    resumed.load_state_dict(state)
    for expected in reference[17:]:
        got = next(resumed)
        assert (got.epoch, got.batch_index) == (expected.epoch, expected.batch_index)
        assert np.array_equal(got.src, expected.src) and np.array_equal(got.tgt_out, expected.tgt_out)
    with pytest.raises(ValueError, match="seed"):
        D.BatchIterator(dataset, max_tokens=100, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="examples"):
        D.BatchIterator(random_dataset(10), max_tokens=100, seed=9).load_state_dict(state)


def test_too_long_example_and_bad_arguments():
    dataset = D.TranslationDataset([[4] * 50], [[5] * 3])
    with pytest.raises(ValueError, match=r"sentence 1 of the set is 51 sub-word tokens.*max_tokens=32"):
        D.BatchIterator(dataset, max_tokens=32).batches(0)
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        D.BatchIterator(dataset, max_tokens=0)
    with pytest.raises(ValueError, match="1 source sentences but 2"):
        D.TranslationDataset([[4]], [[5], [6]])


def test_subword_length_limit_reports_or_refuses():
    src = [[4] * 3, [4] * 9, [4] * 2]
    tgt = [[5] * 3, [5] * 2, [5] * 9]
    with pytest.raises(
        D.DataValidationError, match=r"2 of 3 pairs are longer than 8 sub-word tokens.*lines 2, 3 \(1-based"
    ):
        D.limit_subword_length(src, tgt, max_len=8)
    kept_src, kept_tgt, report = D.limit_subword_length(src, tgt, max_len=8, on_bad="filter")
    assert kept_src == [[4] * 3] and kept_tgt == [[5] * 3]
    assert report.dropped == {D.REASON_TOO_MANY_SUBWORDS: [2, 3]} and report.kept == 1


def test_encode_splits_with_a_character_level_stand_in():
    class Chars:  # anything with encode() and the special ids works
        pad_id, bos_id, eos_id = 0, 2, 3

        def encode(self, texts):
            return [[4 + (ord(c) % 50) for c in text] for text in texts]

    splits = {
        "train": ds.ParallelText(["ab", "abcdefghij"], ["x", "y"]),
        "valid": ds.ParallelText(["abcdefghij"], ["z"]),
    }
    datasets, reports = D.encode_splits(splits, Chars(), Chars(), max_len=5, on_bad="filter")
    assert len(datasets["train"]) == 1 and len(datasets["valid"]) == 1  # evaluation splits are never cut
    assert reports[0].num_dropped == 1
    assert datasets["train"].src_lengths.tolist() == [3] and datasets["train"].tgt_lengths.tolist() == [2]


def test_evaluation_batches_map_back_to_order():
    dataset = random_dataset(50)
    rows = {}
    for batch in D.evaluation_batches(dataset, max_tokens=90):
        for row, index in enumerate(batch.indices):
            rows[int(index)] = batch.src[row, : batch.src_lengths[row] - 1].tolist()
    assert [rows[i] for i in range(50)] == [s.tolist() for s in dataset.src_ids]


# ---------------------------------------------------------------------------------------------------------------
# Language-model windows
# ---------------------------------------------------------------------------------------------------------------


def test_split_stream_is_contiguous_90_10():
    train, valid = D.split_stream(np.arange(1000))
    assert len(train) == 900 and len(valid) == 100 and np.array_equal(np.concatenate([train, valid]), np.arange(1000))
    with pytest.raises(ValueError, match="at least 2"):
        D.split_stream([7])
    with pytest.raises(ValueError, match="train_fraction"):
        D.split_stream(np.arange(10), 1.0)


def test_lm_windows_shifted_seeded_and_resumable():
    data = np.arange(500, dtype=np.int64)
    batcher = D.LMBatcher(data, block_size=16, batch_size=4, seed=3)
    x, y = batcher.sample()
    assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
    assert np.array_equal(y, x + 1)  # y is x shifted by one position in the stream
    state = batcher.state_dict()
    following = [batcher.sample() for _ in range(3)]
    restored = D.LMBatcher(data, block_size=16, batch_size=4, seed=999)
    restored.load_state_dict(state)
    for expected in following:
        got = restored.sample()
        assert np.array_equal(got[0], expected[0])
    again = D.LMBatcher(data, block_size=16, batch_size=4, seed=3).sample()
    assert np.array_equal(again[0], x)
    with pytest.raises(ValueError, match="not more than block_size=500"):
        D.LMBatcher(data, block_size=500, batch_size=1)


def test_sequential_windows_predict_every_token_once():
    data = np.arange(23)
    targets = np.concatenate([y for _, y in D.sequential_windows(data, 5)])
    assert np.array_equal(targets, data[1:])


# ---------------------------------------------------------------------------------------------------------------
# The real cache (skipped when absent)
# ---------------------------------------------------------------------------------------------------------------


def real_cache() -> Path | None:
    candidates = [os.environ.get(ds.DATA_DIR_ENV), REPO.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "multi30k" / "train.de.gz").exists():
            return Path(candidate)
    return None


@pytest.mark.skipif(real_cache() is None, reason="no Multi30k cache ($TRANSFORMER_DATA or <repo>/../shared/data)")
def test_real_multi30k_cache_loads_offline_with_checksums():
    corpus = ds.load_multi30k("de", "en", data_dir=real_cache(), fetcher=no_network)
    assert [len(corpus[s]) for s in ("train", "valid", "test")] == [29000, 1014, 1000]
    assert corpus.reports["train"].stripped == 40 and corpus.reports["train"].num_dropped == 0
    assert all(s == s.strip() and s for s in corpus["train"].src)
    assert all(len(corpus[s].src) == len(corpus[s].tgt) for s in ("train", "valid", "test"))


@pytest.mark.skipif(real_cache() is None, reason="no shared data cache ($TRANSFORMER_DATA or <repo>/../shared/data)")
def test_real_tatoeba_and_shakespeare_cache():
    cache = real_cache()
    text = ds.load_tinyshakespeare(data_dir=cache, fetcher=no_network)
    assert len(text) == 1_115_394 and len(set(text)) == 65
    corpus = ds.load_tatoeba("de", "en", data_dir=cache, fetcher=no_network, seed=0)
    assert sum(len(corpus[s]) for s in ("train", "valid", "test")) + corpus.reports["train"].num_dropped == 169_813
    assert not set(corpus["test"].src) & set(corpus["train"].src)
