"""Bad inputs a hostile but realistic user tries, each of which once lost work, gave a silently wrong result or a
traceback: every one now ends in a one-line ``error:`` (exit 2) or is handled, and nothing a user made is lost.

Data loss: average over a training checkpoint, a run killed before its first checkpoint, an empty validation split,
one over-long training pair. Silent wrong results: a tokenizer setting that differs from the run's tokenizer, a
corpus changed since training, a checkpoint config missing a key or holding a wrong type, numbers out of range.
(SIGTERM is in test_train.py beside Ctrl-C; the cross-entropy kernels on -inf logits in test_kernels.py.)
"""

from __future__ import annotations

import json
import shutil

import pytest

from transformer import cli
from transformer.checkpoint import MANIFEST

from test_cli import DATA, FIXTURES, TINY_CONFIG, assert_clean_error, config_args, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory after 4 training steps (checkpoints at steps 2 and 4)."""
    run_dir = tmp_path_factory.mktemp("run")
    assert cli.main(["train", *config_args(run_dir, "train.max_steps=4", "train.validate_every=2")]) == 0
    return run_dir


def copy_of(run_dir, tmp_path, name="copy"):
    shutil.copytree(run_dir, tmp_path / name)
    return tmp_path / name


def fixture_copy(tmp_path, edit=None):
    """The fixture corpus copied into tmp_path (``edit(lines_de, lines_en)`` may change it); returns data overrides."""
    de = (FIXTURES / "tiny.de").read_text(encoding="utf-8").splitlines()
    en = (FIXTURES / "tiny.en").read_text(encoding="utf-8").splitlines()
    if edit is not None:
        edit(de, en)
    (tmp_path / "c.de").write_text("\n".join(de) + "\n", encoding="utf-8")
    (tmp_path / "c.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    return [f"data.src_path={tmp_path / 'c.de'}", f"data.tgt_path={tmp_path / 'c.en'}"]


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


# ================================================================================ data loss and lost runs
def test_average_never_replaces_a_training_checkpoint(trained, tmp_path, capsys):
    run_dir = copy_of(trained, tmp_path)
    target = run_dir / "checkpoints" / "step-000000004"
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    code, _, err = run(capsys, "average", "--run-dir", run_dir, "--last", 2, "--output", target)
    assert_clean_error(code, err, str(target), "training checkpoint")
    code, _, err = run(capsys, "average", "--run-dir", run_dir, "--last", 2, "--output", target, "--overwrite")
    assert_clean_error(code, err, "training checkpoint")  # not even when asked
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    # Nothing inside the run's checkpoints/: a step-N name would be taken for the newest training checkpoint, and
    # rotation deletes whatever lies in a checkpoint (or beside them).
    for inside in ("step-000000099", "avg", "step-000000002/avg"):
        code, _, err = run(
            capsys, "average", "--run-dir", run_dir, "--last", 2, "--output", run_dir / "checkpoints" / inside
        )
        assert_clean_error(code, err, "checkpoint rotation")
    # Each checkpoint counts once.
    code, _, err = run(
        capsys,
        "average",
        run_dir / "checkpoints" / "step-000000004",
        "--run-dir",
        run_dir,
        "--last",
        2,
        "--output",
        tmp_path / "twice",
    )
    assert_clean_error(code, err, "listed twice")
    # Something else that exists is never replaced either.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    code, _, err = run(capsys, "average", "--run-dir", run_dir, "--last", 2, "--output", tmp_path / "notes")
    assert_clean_error(code, err, "not a checkpoint")
    assert (tmp_path / "notes" / "a.txt").read_text() == "mine"
    # An earlier average is replaced only with --overwrite.
    assert run(capsys, "average", "--run-dir", run_dir, "--last", 2, "--output", tmp_path / "avg")[0] == 0
    code, _, err = run(capsys, "average", "--run-dir", run_dir, "--last", 2, "--output", tmp_path / "avg")
    assert_clean_error(code, err, "--overwrite")
    assert (
        run(capsys, "average", "--run-dir", run_dir, "--last", 1, "--output", tmp_path / "avg", "--overwrite")[0] == 0
    )
    # The run still resumes.
    code, out, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=5"), "--resume")
    assert code == 0, err
    assert last_json(out)["step"] == 5


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(trained, tmp_path, capsys):
    run_dir = copy_of(trained, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")  # as if killed before its first checkpoint
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=3"))
    assert_clean_error(code, err, "before its first checkpoint", "--resume")
    code, out, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=3"), "--resume")
    assert code == 0, err
    assert "starting it again from step 0" in err
    assert last_json(out)["step"] == 3
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3]  # the old run's records are gone


def test_resume_of_a_mistyped_run_directory_creates_nothing(tmp_path, capsys):
    run_dir = tmp_path / "runz" / "typo"
    code, _, err = run(capsys, "train", *config_args(run_dir), "--resume")
    assert_clean_error(code, err, "--resume", str(run_dir), "no config.json")
    assert not (tmp_path / "runz").exists()


def test_an_empty_validation_split_is_refused_before_training(tmp_path, capsys):
    code, _, err = run(capsys, "train", *config_args(tmp_path / "run", "data.valid_size=0"))
    assert_clean_error(code, err, "validation split is empty", "data.valid_size")
    assert not (tmp_path / "run" / "checkpoints").exists()


def a_training_line():
    """A 1-based line of the fixture corpus that the tiny config's seeded split puts into training."""
    from transformer.config import load_config
    from transformer.tasks import data_settings, load_corpus

    config = load_config(TINY_CONFIG, DATA)
    return load_corpus(data_settings(config["data"]))["train"].lines[3]


def test_an_over_long_training_pair_is_filtered_and_reported_with_its_file_line(tmp_path, capsys):
    line = a_training_line()
    # One whitespace token (the whitespace filter passes it), thousands of sub-words.
    data = fixture_copy(tmp_path, lambda de, en: de.__setitem__(line - 1, "x" * 10000))
    code, out, err = run(capsys, "train", *config_args(tmp_path / "run", "train.max_steps=2", data=data))
    assert code == 0, err
    assert "c.de" in err and f"line {line} " in err and "train.max_tokens=256" in err
    # Refused, with the file and line, when the config says so.
    code, _, err = run(
        capsys, "train", *config_args(tmp_path / "run2", "train.max_steps=2", 'data.on_bad="error"', data=data)
    )
    assert_clean_error(code, err, "c.de", f"line {line} ", "on_bad")


def test_learned_positions_filter_training_pairs_by_max_len_and_evaluation_still_works(tmp_path, capsys):
    line = a_training_line()
    data = fixture_copy(tmp_path, lambda de, en: de.__setitem__(line - 1, " ".join(["Hund"] * 60)))
    run_dir = tmp_path / "run"
    code, _, err = run(
        capsys,
        "train",
        *config_args(run_dir, "train.max_steps=3", 'model.positional="learned"', "model.max_len=48", data=data),
    )
    assert code == 0, err
    assert "1 of 22 pairs" in err and f"line {line} " in err and "model.max_len=48" in err
    # A limit that leaves nothing to train on says so.
    code, _, err = run(
        capsys, "train", *config_args(tmp_path / "run2", 'model.positional="learned"', "model.max_len=4", data=data)
    )
    assert_clean_error(code, err, "no training pair is left", "model.max_len=4")
    for split in ("valid", "test"):  # evaluation pairs are cut to the positions, never crash
        code, out, err = run(capsys, "evaluate", "--checkpoint", run_dir, "--split", split, "--beam", 1)
        assert code == 0, err
    code, out, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=4", data=data), "--resume")
    assert code == 0, err


# ================================================================================ silent wrong results
def test_the_tokenizer_has_one_source_of_truth(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "prepare", *config_args(run_dir, "tokenizer.vocab_size=340"))[0] == 0
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=2"))
    assert_clean_error(code, err, "tokenizer.vocab_size=340", "320", "--run-dir")
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=2", "tokenizer.vocab_size=340"))
    assert code == 0, err
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["tokenizer"]["vocab_size"] == 340
    # An override on --resume cannot change the tokenizer either.
    code, _, err = run(
        capsys, "train", *config_args(run_dir, "train.max_steps=3", "tokenizer.vocab_size=350"), "--resume"
    )
    assert_clean_error(code, err, "tokenizer.vocab_size=340", "350")


def test_evaluate_and_resume_refuse_a_corpus_changed_since_training(tmp_path, capsys):
    data = fixture_copy(tmp_path)
    run_dir = tmp_path / "run"
    assert run(capsys, "train", *config_args(run_dir, "train.max_steps=2", data=data))[0] == 0
    code, _, err = run(capsys, "evaluate", "--checkpoint", run_dir, "--beam", 1)
    assert code == 0, err
    fixture_copy(tmp_path, lambda de, en: en.__setitem__(0, "Something else entirely."))
    code, _, err = run(capsys, "evaluate", "--checkpoint", run_dir, "--beam", 1)
    assert_clean_error(code, err, "c.en changed", "--allow-changed-data")
    code, out, err = run(capsys, "evaluate", "--checkpoint", run_dir, "--beam", 1, "--allow-changed-data")
    assert code == 0 and "warning:" in err and "c.en changed" in err
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=3", data=data), "--resume")
    assert_clean_error(code, err, "--resume", "c.en changed")


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda c: c.pop("n_heads"), ["missing required key", "n_heads", "checkpoint"]),
        (lambda c: c.update(n_heads="2"), ["n_heads must be a whole number", "'2'"]),
        (lambda c: c.update(d_model=[16]), ["d_model must be a whole number"]),
        (lambda c: c.update(dropout="x"), ["dropout must be a number"]),
        (lambda c: c.update(norm_first=1), ["norm_first must be true or false"]),
        (lambda c: c.update(num_encoder_layers=-1), ["num_encoder_layers must be a whole number >= 1"]),
    ],
)
def test_a_checkpoint_config_is_validated_strictly(trained, tmp_path, capsys, edit, fragments):
    checkpoint = copy_of(trained, tmp_path) / "checkpoints" / "step-000000004"
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    edit(manifest["config"])
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "in.txt").write_text("Ein Hund.\n", encoding="utf-8")
    code, _, err = run(capsys, "translate", "--checkpoint", checkpoint, "--input", tmp_path / "in.txt")
    assert_clean_error(code, err, str(checkpoint), *fragments)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["translate", "--beam", "0"], ["--beam", "in [1, 1000]", "'0'"]),
        (["translate", "--beam", "-3"], ["--beam", "'-3'"]),
        (["translate", "--beam", "10000000"], ["--beam", "in [1, 1000]"]),
        (["translate", "--beam", "two"], ["--beam", "'two'"]),
        (["translate", "--alpha", "-100"], ["--alpha", "in [0, 10]"]),
        (["translate", "--alpha", "1e300"], ["--alpha", "in [0, 10]"]),
        (["translate", "--max-tokens", "0"], ["--max-tokens", ">= 1"]),
        (["evaluate", "--limit", "-5"], ["--limit", ">= 0"]),
        (["average", "--last", "0", "--output", "OUT"], ["--last", ">= 1"]),
        (["average", "--last", "-2", "--output", "OUT"], ["--last", ">= 1"]),
        (["lm-sample", "--max-new-tokens", "-5"], ["--max-new-tokens", ">= 0"]),
        (["lm-sample", "--top-p", "1.5"], ["--top-p", "in [0, 1]"]),
        (["lm-sample", "--temperature", "nan"], ["--temperature"]),
        (["lm-eval", "--stride", "-1"], ["--stride", ">= 0"]),
    ],
)
def test_command_line_numbers_out_of_range(trained, tmp_path, capsys, args, fragments):
    command, rest = args[0], [str(tmp_path / "avg") if a == "OUT" else a for a in args[1:]]
    where = ["--run-dir", trained] if command == "average" else ["--checkpoint", trained]
    code, out, err = run(capsys, command, *where, *rest)
    assert_clean_error(code, err, *fragments)
    assert out == ""


@pytest.mark.parametrize(
    "override, fragments",
    [
        ("model.num_encoder_layers=-1", ["[model] num_encoder_layers must be a whole number >= 1", "-1"]),
        ("model.n_heads=0", ["[model] n_heads must be a whole number >= 1"]),
        ("model.dropout=1.5", ["[model] dropout must be a number in [0, 1)"]),
        ("tokenizer.vocab_size=abc", ["[tokenizer] vocab_size must be a whole number", "'abc'"]),
        ("tokenizer.character_coverage=0", ["[tokenizer] character_coverage", "(0, 1]"]),
        ("data.valid_size=-3", ["[data] valid_size", ">= 0"]),
        ("data.max_ratio=-1", ["[data] max_ratio must be a number >= 0"]),
        ("data.on_bad=ignore", ["[data] on_bad must be one of error, filter"]),
        ("train.label_smoothing=1", ["[train] label_smoothing must be a number in [0, 1)"]),
        ("train.warmup_steps=-10", ["[train] warmup_steps must be a whole number >= 0"]),
        ("train.betas=[0.9]", ["[train] betas must be a list of two numbers"]),
        ("train.lr=-1", ["[train] lr must be a number >= 0"]),
        ("train.optimizer=adamm", ["[train] optimizer must be one of adam, adamw, sgd"]),
    ],
)
def test_config_numbers_out_of_range_are_refused_before_any_work(tmp_path, capsys, override, fragments):
    code, _, err = run(capsys, "train", *config_args(tmp_path / "run", override))
    assert_clean_error(code, err, *fragments)
    assert not (tmp_path / "run" / "tokenizer").exists() or override.startswith("model.")


def test_debug_shows_the_traceback_behind_the_one_line_error(tmp_path, capsys):
    code, _, err = run(capsys, "--debug", "train", *config_args(tmp_path / "run", "train.lr=-1"))
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_kernels_agree_on_minus_infinity_logits(dtype):
    # A masked vocabulary entry is a -inf logit: its probability is 0, the loss finite (without smoothing; with
    # smoothing the uniform part puts mass on it, so the loss is +inf), never NaN, on both backends alike.
    import numpy as np
    import npgrad as ng
    from npgrad import functional as F

    logits = np.array([[1.0, -np.inf, 2.0], [0.5, 0.1, -np.inf], [-np.inf, 1.0, 2.0]], dtype=dtype)
    target = np.array([0, 1, 2])
    results = {}
    for backend in ("numpy", "numba"):
        with ng.use_backend(backend):
            x = ng.tensor(logits, requires_grad=True)
            loss = F.cross_entropy(x, target, reduction="none")
            loss.sum().backward()
            smoothed = F.cross_entropy(ng.tensor(logits), target, label_smoothing=0.1, reduction="none").data
            results[backend] = loss.data, x.grad, smoothed
    for loss, grad, smoothed in results.values():
        assert np.isfinite(loss).all() and np.isfinite(grad).all()
        assert np.all(grad[np.isinf(logits)] == 0)
        assert np.all(smoothed == np.inf)
    tolerance = 1e-6 if dtype == "float32" else 1e-12
    for a, b in zip(results["numpy"][:2], results["numba"][:2]):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf"), "1e-5", True])
def test_layer_norm_refuses_a_bad_eps_on_both_backends(backend, eps):
    # eps = 0 on a constant row gave NaN with NumPy and ZeroDivisionError with Numba; a negative eps, NaN.
    import numpy as np
    import npgrad as ng
    from npgrad import functional as F

    x = ng.tensor(np.ones((2, 3)), requires_grad=True)  # a constant row: var = 0
    with ng.use_backend(backend):
        with pytest.raises(ValueError, match="layer_norm: eps must be a finite number > 0"):
            F.layer_norm(x, None, None, eps=eps)
        with pytest.raises(ValueError, match="add_layer_norm: eps must be a finite number > 0"):
            F.add_layer_norm(x, x, None, None, eps=eps)


# ================================================================================ found by a hostile user's session
def test_output_files_are_never_replaced_silently(trained, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("Ein Hund.\n", encoding="utf-8")
    (tmp_path / "mine.txt").write_text("my notes\n", encoding="utf-8")
    translate = ["translate", "--checkpoint", trained, "--beam", 1, "--input", tmp_path / "in.txt"]
    code, _, err = run(capsys, *translate, "--output", tmp_path / "mine.txt")
    assert_clean_error(code, err, "mine.txt exists", "--overwrite")
    assert (tmp_path / "mine.txt").read_text() == "my notes\n"
    code, _, err = run(capsys, *translate, "--output", tmp_path)
    assert_clean_error(code, err, "is a directory")
    assert run(capsys, *translate, "--output", tmp_path / "mine.txt", "--overwrite")[0] == 0
    # evaluate: a corpus file is never an output, not even with --overwrite; nor a file inside a checkpoint.
    evaluate = ["evaluate", "--checkpoint", trained, "--beam", 1, "--limit", 1]
    code, _, err = run(capsys, *evaluate, "--hypotheses", FIXTURES / "tiny.en", "--overwrite")
    assert_clean_error(code, err, "tiny.en", "corpus files")
    code, _, err = run(capsys, *evaluate, "--sheet", trained / "checkpoints" / "step-000000004" / "s.csv")
    assert_clean_error(code, err, "inside", "step-000000004")
    code, _, err = run(capsys, *evaluate, "--sheet", tmp_path / "mine.txt")
    assert_clean_error(code, err, "--sheet", "exists")


def test_a_run_whose_config_json_was_lost_resumes_from_its_checkpoint(trained, tmp_path, capsys):
    run_dir = copy_of(trained, tmp_path)
    (run_dir / "config.json").unlink()
    code, out, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=5"), "--resume")
    assert code == 0, err
    assert "config.json is missing" in err and last_json(out)["step"] == 5
    assert json.loads((run_dir / "config.json").read_text())["train"]["max_steps"] == 5  # written again


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("not json", "not valid JSON"),
        ("[1]", "must be a table"),
        ('{"data": 5}', "[data] must be a table"),
        ('{"run": {"bogus": 1}}', "unknown key"),
    ],
)
def test_a_damaged_config_json_is_named(trained, tmp_path, capsys, text, fragment):
    run_dir = copy_of(trained, tmp_path)
    (run_dir / "config.json").write_text(text)
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=5"), "--resume")
    assert_clean_error(code, err, str(run_dir / "config.json"), fragment)


def test_a_config_file_that_is_not_toml_text_or_has_a_scalar_section_is_named(tmp_path, capsys):
    (tmp_path / "binary.toml").write_bytes(b"\xd0\xcf\x11\xe0\x00\xff")
    code, _, err = run(capsys, "prepare", *config_args(tmp_path / "run", config=tmp_path / "binary.toml"))
    assert_clean_error(code, err, "binary.toml", "not UTF-8")
    (tmp_path / "scalar.toml").write_text("data = 5\n")
    code, _, err = run(capsys, "prepare", *config_args(tmp_path / "run", config=tmp_path / "scalar.toml"))
    assert_clean_error(code, err, "scalar.toml", "[data] must be a table")


def test_a_run_directory_inside_a_checkpoint_is_refused(trained, tmp_path, capsys):
    run_dir = copy_of(trained, tmp_path)
    inside = run_dir / "checkpoints" / "step-000000004" / "run"
    code, _, err = run(capsys, "train", *config_args(inside, "train.max_steps=2"))
    assert_clean_error(code, err, "--run-dir", "rotation deletes")
    assert not inside.exists()


def test_resume_refuses_a_changed_split_and_a_foreign_tokenizer_and_restores_a_missing_one(trained, tmp_path, capsys):
    run_dir = copy_of(trained, tmp_path)
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=5", "data.split_seed=5"), "--resume")
    assert_clean_error(code, err, "data.split_seed cannot change")
    model_file = run_dir / "tokenizer" / "spm.model"
    original = model_file.read_bytes()
    model_file.write_bytes(original[:-10] + b"0123456789")
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=5"), "--resume")
    assert_clean_error(code, err, "spm.model differs", "cp ")
    model_file.unlink()
    code, _, err = run(capsys, "train", *config_args(run_dir, "train.max_steps=5"), "--resume")
    assert code == 0, err
    assert "was missing: restored" in err and model_file.read_bytes() == original


def test_resume_with_the_other_kind_of_command_says_which(trained, tmp_path, capsys):
    code, _, err = run(
        capsys, "lm-train", "--config", "shakespeare_char", "--run-dir", copy_of(trained, tmp_path), "--resume"
    )
    assert_clean_error(code, err, "is a translation run", "resume it with train")


@pytest.mark.parametrize(
    "command, override, fragments",
    [
        ("lm-train", "train.max_epochs=1", ["max_epochs", "only for a translation model"]),
        ("lm-train", "train.bleu_beam=4", ["bleu_beam", "only for a translation model"]),
        ("train", "train.eval_iters=4", ["eval_iters", "only for a language model"]),
        ("lm-train", "model.bogus=1", ["[model]: unknown key", "bogus"]),
        ("lm-train", "model.vocab_size=10", ["[model]: unknown key", "vocab_size"]),
        ("lm-train", "model.block_size=100000000", ["[model] block_size must be a whole number in [1, 65536]"]),
        ("train", "model.max_len=100000000", ["[model] max_len must be a whole number in [2, 65536]"]),
        ("train", "model.n_heads=3", ["d_model=16 must be divisible by n_heads=3"]),
    ],
)
def test_task_settings_that_would_be_ignored_or_crash_are_refused(tmp_path, capsys, command, override, fragments):
    if command == "lm-train":
        (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
        args = [
            "--config",
            "shakespeare_char",
            "--run-dir",
            tmp_path / "run",
            f"data.text_path={tmp_path / 't.txt'}",
            "train.max_steps=1",
            "train.warmup_steps=1",  # (the recipe's 100 would be refused first: a cosine longer than the run)
            "model.block_size=8",
            override,
        ]
        if override.startswith("model.block_size"):
            args.remove("model.block_size=8")
    else:
        args = config_args(tmp_path / "run", "train.max_steps=1", override)
    code, _, err = run(capsys, command, *args)
    assert_clean_error(code, err, *fragments)
    assert not (tmp_path / "run" / "tokenizer").exists()  # refused before a tokenizer is trained


def test_a_capped_vocabulary_is_said(tmp_path, capsys):
    code, _, err = run(capsys, "prepare", *config_args(tmp_path / "run", "tokenizer.vocab_size=100000"))
    assert code == 0, err
    assert "warning: tokenizer.vocab_size=100000 asked for more pieces" in err


@pytest.mark.parametrize(
    "rows, fragment",
    [
        ("0,a,b,c,2.5,3\n", "2.5 is not a whole score"),
        ("0,a,b,c,2,3\n0,a,b,c,4,4\n", "id 0 is already rated at line 2"),
    ],
)
def test_a_sheet_with_fractional_scores_or_repeated_ids_is_refused(tmp_path, capsys, rows, fragment):
    (tmp_path / "s.csv").write_text("id,source,reference,hypothesis,adequacy,fluency\n" + rows)
    code, _, err = run(capsys, "sheet-summary", tmp_path / "s.csv")
    assert_clean_error(code, err, "s.csv", fragment)


def test_a_binary_sheet_is_named(tmp_path, capsys):
    (tmp_path / "s.csv").write_bytes(b"id,adequacy,fluency\n\xff\xfe\x00\n")
    code, _, err = run(capsys, "sheet-summary", tmp_path / "s.csv")
    assert_clean_error(code, err, "s.csv", "not UTF-8")


def test_tsv_columns_must_differ(tmp_path, capsys):
    (tmp_path / "c.tsv").write_text("a\tb\n" * 20, encoding="utf-8")
    code, _, err = run(
        capsys,
        "prepare",
        *config_args(
            tmp_path / "run",
            'data.corpus="tsv"',
            f"data.tsv_path={tmp_path / 'c.tsv'}",
            "data.src_column=1",
            "data.tgt_column=1",
            data=[],
        ),
    )
    assert_clean_error(code, err, "src_column and tgt_column are both 1")
