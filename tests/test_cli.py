"""The command line, end to end, through ``transformer.cli.main`` on the tiny config and the 30-pair fixture.

prepare -> train -> translate (stdin, --input/--output, greedy and beam) -> evaluate (sacreBLEU on detokenised
text, signature printed) -> average -> evaluate the average -> sheet-summary; translate keeps line count and order;
every bad input ends with ``error: ...`` and exit code 2, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import pytest
import sacrebleu

from transformer import cli
from transformer.checkpoint import MODEL_FILE

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_CONFIG = FIXTURES / "tiny_config.toml"
DATA = [f"data.src_path={FIXTURES / 'tiny.de'}", f"data.tgt_path={FIXTURES / 'tiny.en'}"]
SPIECE_SPACE = "\u2581"


def config_args(run_dir, *overrides, config=TINY_CONFIG, data=DATA):
    return ["--config", str(config), "--run-dir", str(run_dir), *data, *overrides]


def run(capsys, *args, stdin: bytes | None = None, monkeypatch=None):
    """(exit code, stdout, stderr) of ``python -m transformer ARGS``, in process."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory after ``prepare`` and 4 training steps (checkpoints at steps 2 and 4)."""
    run_dir = tmp_path_factory.mktemp("run")
    assert cli.main(["prepare", *config_args(run_dir)]) == 0
    assert (run_dir / "tokenizer" / "tokenizer.json").is_file()
    assert cli.main(["train", *config_args(run_dir, "train.max_steps=4", "train.validate_every=2")]) == 0
    return run_dir


def test_end_to_end(trained, tmp_path, capsys, monkeypatch):
    # train wrote checkpoints, the log and the config
    steps = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert steps == ["step-000000002", "step-000000004"]
    assert (trained / "config.json").is_file() and (trained / "log.jsonl").is_file()

    # translate: standard input, greedy and beam 3; one output line per input line
    sources = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()[:3]
    for beam in (1, 3):
        code, out, err = run(
            capsys,
            "translate",
            "--checkpoint",
            trained,
            "--beam",
            beam,
            stdin=("\n".join(sources) + "\n").encode(),
            monkeypatch=monkeypatch,
        )
        assert code == 0, err
        lines = out.split("\n")
        assert lines[-1] == "" and len(lines) - 1 == len(sources)
        assert not any(SPIECE_SPACE in line for line in lines)
        # --input / --output give the same translations
        (tmp_path / "in.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
        code, _, err = run(
            capsys,
            "translate",
            "--checkpoint",
            trained,
            "--beam",
            beam,
            "--input",
            tmp_path / "in.txt",
            "--output",
            tmp_path / "out.txt",
            "--overwrite",
        )
        assert code == 0, err
        assert (tmp_path / "out.txt").read_text(encoding="utf-8") == out

    # evaluate: sacreBLEU on the detokenised hypotheses against the raw references, with its signature
    hyps_path, sheet = tmp_path / "hyps.txt", tmp_path / "sheet.csv"
    code, out, err = run(
        capsys, "evaluate", "--checkpoint", trained, "--beam", 2, "--hypotheses", hyps_path, "--sheet", sheet
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["split"] == "test" and result["sentences"] == 4
    assert "tok:13a" in result["bleu_signature"] and "case:mixed" in result["bleu_signature"]
    assert "nc:6" in result["chrf_signature"]
    hyps = hyps_path.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hyps) == 4 and not any(SPIECE_SPACE in h for h in hyps)
    references = test_references(trained)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [references]).score)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [references]).score)
    assert result["perplexity"] > 1.0

    # average the last two checkpoints; the average is a checkpoint translate and evaluate accept anywhere
    averaged = tmp_path / "elsewhere" / "averaged"
    code, _, err = run(capsys, "average", "--run-dir", trained, "--last", 2, "--output", averaged)
    assert code == 0, err
    code, out, err = run(capsys, "evaluate", "--checkpoint", averaged, "--beam", 1, "--limit", 2)
    assert code == 0, err
    assert json.loads(out)["sentences"] == 2

    # sheet-summary of the human-evaluation sheet after a rater filled it
    with open(sheet, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["hypothesis"] for r in sorted(rows, key=lambda r: int(r["id"]))] == hyps
    for number, row in enumerate(rows):
        row["adequacy"], row["fluency"] = str(1 + number % 2), "3"
    with open(sheet, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, out, err = run(capsys, "sheet-summary", sheet)
    assert code == 0, err
    assert "4 rows" in out and "mean 1.50" in out and "mean 3.00" in out


def test_references(run_dir):
    """The raw test-split references of the run (the same seeded split the run used)."""
    from transformer.tasks import DATA_DEFAULTS, load_corpus

    config = json.loads((Path(run_dir) / "config.json").read_text())
    return load_corpus({**DATA_DEFAULTS, **config["data"]})["test"].tgt


test_references.__test__ = False  # a helper, not a test


def test_translate_keeps_line_count_and_order(trained, tmp_path, capsys):
    sentences = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()
    very_long = " ".join(sentences[:12])  # about 100 words: more subwords than the model's max_len (64)
    lines = [sentences[0], "", sentences[5], "   ", very_long, sentences[9], "\t", "", sentences[20] + "\r"]
    source = tmp_path / "in.txt"
    source.write_bytes("\n".join(lines).encode("utf-8"))  # no final newline: the last line still counts
    for beam in (1, 3):
        code, out, err = run(capsys, "translate", "--checkpoint", trained, "--beam", beam, "--input", source)
        assert code == 0, err
        outputs = out.split("\n")
        assert outputs.pop() == ""
        assert len(outputs) == len(lines)
        assert "truncated" in err and "line 5" in err  # the long line is cut to fit, and said so
        for line, output in zip(lines, outputs):
            if not line.strip():
                assert output == ""
            else:
                assert output != ""
        # Output i is the translation of line i: translating each line on its own gives the same text.
        # (The untrained model emits no EOS, so its output length follows its own input's length.)
        for index in (0, 2, 4, 8):
            (tmp_path / "one.txt").write_text(lines[index] + "\n", encoding="utf-8")
            code, alone, err = run(
                capsys, "translate", "--checkpoint", trained, "--beam", beam, "--input", tmp_path / "one.txt"
            )
            assert code == 0, err
            assert alone == outputs[index] + "\n", f"line {index + 1}"
    assert len({len(o) for o in outputs if o}) > 1  # the order check above is not vacuous


# ------------------------------------------------------------------------------------------------ bad inputs
def assert_clean_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("train.max_stepz=3", ["[train]", "unknown key", "max_stepz"]),
        ("model.d_modle=8", ["[model]", "unknown key", "d_modle"]),
        ("model.src_vocab_size=8", ["[model]", "src_vocab_size"]),  # set by the tokenizer, not the config
        ("data.srcpath=x", ["[data]", "srcpath"]),
        ("tokenizer.vocab=8", ["[tokenizer]", "vocab"]),
        ("train.max_steps", ["section.key=value"]),  # no value
        ("max_steps=3", ["must name its section", "train.max_steps"]),  # no section
        ("trian.max_steps=3", ["unknown section", "trian"]),
        ("train.max_steps=abc", ["[train] max_steps must be a whole number >= 0", "'abc'"]),
        ("train.batch_size=2.5", ["[train] batch_size must be a whole number"]),
        ("train.lr=true", ["[train] lr must be a number"]),
    ],
)
def test_bad_config_keys_and_overrides(tmp_path, capsys, override, fragments):
    code, _, err = run(capsys, "train", *config_args(tmp_path, override))
    assert_clean_error(code, err, *fragments)


def test_override_flag_without_value(tmp_path, capsys):
    code, _, err = run(capsys, "train", *config_args(tmp_path), "--train.max_steps")
    assert_clean_error(code, err, "--train.max_steps", "no value")


def test_override_flags_with_separate_values(tmp_path, capsys):
    # "--section.key value" is the same override as "section.key=value", in any position and any number.
    code, out, err = run(
        capsys,
        "train",
        "--train.max_steps",
        2,
        *config_args(tmp_path),
        "--train.validate_every",
        1,
        "--model.norm_first",
        "true",
    )
    assert code == 0, err
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["train"]["validate_every"] == 1
    assert saved["model"]["norm_first"] is True
    assert json.loads(out.strip().splitlines()[-1])["step"] == 2


def test_resume_keeps_the_runs_overrides(trained, tmp_path, capsys):
    # The run was started with train.max_steps=4; resuming without repeating it must not fall back to the
    # config file's budget, and an override given with --resume applies on top (here: a longer budget).
    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    code, out, err = run(capsys, "train", "--config", TINY_CONFIG, "--run-dir", run_dir, "--resume")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 4
    code, out, err = run(
        capsys, "train", "--config", TINY_CONFIG, "--run-dir", run_dir, "--resume", "train.max_steps=6"
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 6
    assert json.loads((run_dir / "config.json").read_text())["train"]["max_steps"] == 6


def test_unknown_config_file(tmp_path, capsys):
    code, _, err = run(capsys, "train", *config_args(tmp_path, config="no_such_config"))
    assert_clean_error(code, err, "no_such_config", "not found", "tiny")  # lists the configs that exist


def test_invalid_toml(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nmax_steps = 3\n")
    code, _, err = run(capsys, "prepare", *config_args(tmp_path / "run", config=bad))
    assert_clean_error(code, err, str(bad), "invalid TOML")


def test_corpus_files_with_different_line_counts(tmp_path, capsys):
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("one\ntwo\n", encoding="utf-8")
    data = [f"data.src_path={tmp_path / 'a.de'}", f"data.tgt_path={tmp_path / 'a.en'}"]
    code, _, err = run(capsys, "prepare", *config_args(tmp_path / "run", data=data))
    assert_clean_error(code, err, "a.de has 3 lines", "a.en has 2 lines")


def test_corpus_file_with_invalid_utf8(tmp_path, capsys):
    source = (FIXTURES / "tiny.de").read_bytes().split(b"\n")
    source[6] = b"Ein Mann \xff\xfe im Park."
    (tmp_path / "bad.de").write_bytes(b"\n".join(source))
    data = [f"data.src_path={tmp_path / 'bad.de'}", f"data.tgt_path={FIXTURES / 'tiny.en'}"]
    code, _, err = run(capsys, "prepare", *config_args(tmp_path / "run", 'data.on_bad="error"', data=data))
    assert_clean_error(code, err, "bad.de", "line 7", "UTF-8")


def test_translate_input_with_invalid_utf8(trained, tmp_path, capsys, monkeypatch):
    (tmp_path / "in.txt").write_bytes(b"Ein Hund.\nZwei \xc3\x28 Katzen.\n")
    code, out, err = run(capsys, "translate", "--checkpoint", trained, "--beam", 1, "--input", tmp_path / "in.txt")
    assert_clean_error(code, err, "in.txt", "line 2", "UTF-8")
    assert out == ""
    code, _, err = run(
        capsys, "translate", "--checkpoint", trained, "--beam", 1, stdin=b"ok\n\xff\n", monkeypatch=monkeypatch
    )
    assert_clean_error(code, err, "standard input", "line 2", "UTF-8")


def test_resume_without_checkpoints(tmp_path, capsys):
    code, _, err = run(capsys, "train", *config_args(tmp_path), "--resume")
    assert_clean_error(code, err, "--resume", "no checkpoint")


def test_training_again_into_a_used_run_directory_is_refused(trained, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=1"))
    assert_clean_error(code, err, str(run_dir), "--resume")


def test_corrupt_checkpoint(trained, tmp_path, capsys):
    run_dir = tmp_path / "copy"
    shutil.copytree(trained, run_dir)
    weights = run_dir / "checkpoints" / "step-000000004" / MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a full disk
    (tmp_path / "in.txt").write_text("Ein Hund.\n", encoding="utf-8")
    code, _, err = run(capsys, "translate", "--checkpoint", weights.parent, "--input", tmp_path / "in.txt")
    assert_clean_error(code, err, str(weights))
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=6"), "--resume")
    assert_clean_error(code, err, str(weights))


def test_missing_checkpoint(tmp_path, capsys):
    (tmp_path / "in.txt").write_text("Ein Hund.\n", encoding="utf-8")
    code, _, err = run(capsys, "translate", "--checkpoint", tmp_path / "nothing", "--input", tmp_path / "in.txt")
    assert_clean_error(code, err, "nothing")


def test_average_needs_enough_checkpoints(trained, tmp_path, capsys):
    code, _, err = run(capsys, "average", "--run-dir", trained, "--last", 5, "--output", tmp_path / "avg")
    assert_clean_error(code, err, "has 2 checkpoints, 5 requested")


def test_override_normalisation_leaves_option_values_alone():
    from transformer.config import ConfigError, normalise_cli_overrides

    argv = ["lm-sample", "--prompt", "--Enter ROMEO. Hi", "--max-new-tokens", "10", "--output", "x.y"]
    assert normalise_cli_overrides(argv) == argv
    assert normalise_cli_overrides(["train", "--train.lr", "1e-3", "--model.norm_first=true"]) == [
        "train",
        "train.lr=1e-3",
        "model.norm_first=true",
    ]
    with pytest.raises(ConfigError, match="no value"):
        normalise_cli_overrides(["train", "--data.corpus", "--resume"])  # never swallows the next option


def test_score_and_sheet_summary_print_json_and_refuse_mismatched_files(tmp_path, capsys):
    (tmp_path / "hyps.txt").write_text("A man rides a bike.\nTwo dogs play.\n", encoding="utf-8")
    (tmp_path / "refs.txt").write_text("only one line\n", encoding="utf-8")
    code, _, err = run(capsys, "score", "--hyps", tmp_path / "hyps.txt", "--refs", tmp_path / "refs.txt")
    assert_clean_error(code, err, "2 hypotheses", "1 lines")
    (tmp_path / "refs.txt").write_text("A man rides a bike.\nTwo dogs play in the snow.\n", encoding="utf-8")
    code, out, err = run(capsys, "score", "--hyps", tmp_path / "hyps.txt", "--refs", tmp_path / "refs.txt", "--json")
    assert code == 0, err
    assert set(json.loads(out)) == {"bleu", "bleu_signature", "chrf", "chrf_signature", "sentences"}
    (tmp_path / "sheet.csv").write_text("id,source,reference,hypothesis,adequacy,fluency\n0,a,b,c,4,5\n1,a,b,c,,3\n")
    code, out, err = run(capsys, "sheet-summary", tmp_path / "sheet.csv", "--json")
    assert code == 0, err
    assert json.loads(out)["mean"] == {"adequacy": 4.0, "fluency": 4.0}
