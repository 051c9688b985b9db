"""sacreBLEU scores, perplexity and the human-evaluation sheet (transformer.evaluate, and the commands that print
them: sheet-summary, score)."""

import csv
import math

import numpy as np
import pytest
import sacrebleu

from transformer import cli
from transformer import evaluate as E

REFS = ["A man is riding a red bicycle.", "Two dogs are playing in the snow.", "A woman reads a book."]
HYPS = ["A man rides a red bike.", "Two dogs play in the snow.", "A woman is reading a book."]


def test_bleu_and_chrf_match_sacrebleu_and_carry_signatures():
    score, signature = E.bleu(HYPS, REFS)
    assert score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert "tok:13a" in signature and "case:mixed" in signature and "nrefs:1" in signature
    chrf_score, chrf_signature = E.chrf(HYPS, REFS)
    assert chrf_score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert "nc:6" in chrf_signature
    assert E.bleu(REFS, REFS).score == pytest.approx(100.0)
    assert 0.0 < score < 100.0


def test_multiple_reference_streams():
    other = ["A man rides a red bike.", "Two dogs play in snow.", "A lady reads a book."]
    score, signature = E.bleu(HYPS, [REFS, other])
    assert "nrefs:2" in signature and score > E.bleu(HYPS, REFS).score


def test_scores_refuse_sentencepiece_pieces_and_misaligned_input():
    with pytest.raises(ValueError, match="SentencePiece pieces.*detokenised"):
        E.bleu(["▁A ▁man ▁rides", "x", "y"], REFS)
    with pytest.raises(ValueError, match="3 hypotheses but reference set 0 has 2"):
        E.chrf(HYPS, REFS[:2])
    with pytest.raises(TypeError, match="one string"):
        E.bleu("A man.", "A man.")


def test_translation_scores_dict():
    scores = E.translation_scores(HYPS, REFS)
    assert set(scores) == {"bleu", "bleu_signature", "chrf", "chrf_signature", "sentences"}
    assert scores["sentences"] == 3


def test_perplexity_is_exp_of_mean_token_loss():
    rng = np.random.default_rng(0)
    token_losses = rng.uniform(0.1, 4.0, size=500)
    batch_sums = [token_losses[:200].sum(), token_losses[200:].sum()]
    expected = math.exp(token_losses.mean())
    assert E.perplexity(token_losses.sum(), 500) == pytest.approx(expected, rel=1e-12)
    assert E.perplexity(batch_sums, [200, 300]) == pytest.approx(expected, rel=1e-12)
    assert E.bits_per_token(token_losses.sum(), 500) == pytest.approx(token_losses.mean() / math.log(2))
    assert E.perplexity(0.0, 10) == 1.0
    assert E.perplexity(1e6, 1) == math.inf


def test_perplexity_errors():
    with pytest.raises(ValueError, match="total_tokens must be positive"):
        E.perplexity(3.0, 0)
    with pytest.raises(ValueError, match="not finite"):
        E.perplexity(float("nan"), 3)
    with pytest.raises(ValueError, match=">= 0"):
        E.perplexity(-1.0, 3)


def read_sheet(path):
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sheet_is_shuffled_seeded_and_maps_back(tmp_path):
    sources = [f'Quelle {i}, mit "Anführung"\nund Zeilenumbruch' for i in range(20)]
    refs = [f"reference {i}" for i in range(20)]
    hyps = [f"hypothesis {i}" for i in range(20)]
    path = E.write_human_eval_sheet(tmp_path / "sheet.csv", sources, refs, hyps, seed=4)
    rows = read_sheet(path)
    assert list(rows[0]) == list(E.SHEET_COLUMNS)
    ids = [int(row["id"]) for row in rows]
    assert sorted(ids) == list(range(20)) and ids != list(range(20))
    for row in rows:
        i = int(row["id"])
        assert (row["source"], row["reference"], row["hypothesis"]) == (sources[i], refs[i], hyps[i])
        assert row["adequacy"] == "" and row["fluency"] == ""
    again = E.write_human_eval_sheet(tmp_path / "again.csv", sources, refs, hyps, seed=4)
    assert again.read_bytes() == path.read_bytes()
    sample = read_sheet(E.write_human_eval_sheet(tmp_path / "sample.csv", sources, refs, hyps, seed=4, sample_size=5))
    assert [row["id"] for row in sample] == [str(i) for i in ids[:5]]
    with pytest.raises(ValueError, match="aligned"):
        E.write_human_eval_sheet(tmp_path / "x.csv", sources, refs[:3], hyps)


def fill(path, scores):
    rows = read_sheet(path)
    for row, (adequacy, fluency) in zip(rows, scores):
        row["adequacy"], row["fluency"] = adequacy, fluency
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_summarise_filled_sheet(tmp_path, capsys):
    path = E.write_human_eval_sheet(tmp_path / "sheet.csv", ["s"] * 4, ["r"] * 4, ["h"] * 4)
    fill(path, [("5", "4"), ("3", ""), ("4", "2"), (" ", "5")])
    summary = E.summarise_sheet(path)
    assert summary["rows"] == 4
    assert summary["rated"] == {"adequacy": 3, "fluency": 3} and summary["unrated"] == {"adequacy": 1, "fluency": 1}
    assert summary["mean"]["adequacy"] == pytest.approx(4.0) and summary["mean"]["fluency"] == pytest.approx(11 / 3)
    assert summary["histogram"]["adequacy"] == {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1}
    assert cli.main(["sheet-summary", str(path)]) == 0
    assert "adequacy  mean 4.00 over 3 rated (1 unrated)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "adequacy, message",
    [
        ("good", r"line 3 \(id \d+\): adequacy 'good' is not a number"),
        ("6", r"line 3 \(id \d+\): adequacy 6 is outside 1-5"),
        ("0", "outside 1-5"),
    ],
)
def test_summarise_names_the_bad_row(tmp_path, adequacy, message):
    path = E.write_human_eval_sheet(tmp_path / "sheet.csv", ["s"] * 3, ["r"] * 3, ["h"] * 3)
    fill(path, [("4", "4"), (adequacy, "3"), ("2", "2")])
    with pytest.raises(E.SheetError, match=message):
        E.summarise_sheet(path)


def test_summarise_missing_columns(tmp_path, capsys):
    path = tmp_path / "sheet.csv"
    path.write_text("id,source,reference,hypothesis,adequacy\n0,a,b,c,4\n", encoding="utf-8")
    with pytest.raises(E.SheetError, match=r"missing column\(s\) \['fluency'\]"):
        E.summarise_sheet(path)
    assert cli.main(["sheet-summary", str(path)]) == 2
    assert "missing column" in capsys.readouterr().err


def test_score_command(tmp_path, capsys):
    hyps, refs = tmp_path / "hyps.txt", tmp_path / "refs.txt"
    hyps.write_text("\n".join(HYPS) + "\n", encoding="utf-8")
    refs.write_text("\n".join(REFS) + "\n", encoding="utf-8")
    assert cli.main(["score", "--hyps", str(hyps), "--refs", str(refs)]) == 0
    out = capsys.readouterr().out
    assert f"BLEU = {E.bleu(HYPS, REFS).score:.2f}" in out and "tok:13a" in out
