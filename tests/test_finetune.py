"""Starting a run from another run's weights (--init-from), freezing parameters (train.freeze), and their refusals.

A tiny language model pre-trained on one text and fine-tuned on another through the command line: the new run
starts from exactly the checkpoint's weights (with lr 0 it stays there), takes its tokenizer and model config,
and frozen parameters stay bit-identical while the rest train and get optimizer state.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from transformer.checkpoint import MODEL_FILE, OPTIMIZER_FILE, load_checkpoint
from transformer.model import LanguageModel, LMConfig
from transformer.train import init_from_checkpoint

from test_cli import assert_clean_error, run

TINY_MODEL = ["model.d_model=16", "model.n_heads=2", "model.n_layers=2", "model.block_size=8"]
BUDGET = ["train.warmup_steps=1", "train.validate_every=2", "train.eval_iters=1", "train.batch_size=2"]


def lm_args(tmp_path, name, run_dir, *overrides):
    # The config file's [model] section is the big recipe's: the tiny model is given on the command line (explicit
    # [model] keys win over the checkpoint's config, and a mismatch is refused, see below).
    return [
        "--config",
        "shakespeare_char_finetune",
        "--run-dir",
        run_dir,
        f"data.text_path={tmp_path / name}",
        *TINY_MODEL,
        *BUDGET,
        *overrides,
    ]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    (root / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    (root / "b.txt").write_text("a lazy dog sleeps. the fox runs to the brown hill. " * 60, encoding="utf-8")
    (root / "c.txt").write_text("a lazy dog sleeps; the fox runs. " * 60, encoding="utf-8")
    from transformer import cli

    args = ["lm-train", *lm_args(root, "a.txt", root / "pre", "train.max_steps=4")]
    assert cli.main([str(a) for a in args]) == 0
    return root


def final_weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step-{step:09d}" / MODEL_FILE))


def fine_tune(capsys, pretrained, run_dir, *overrides):
    """lm-train on b.txt from the pre-trained run; returns standard error (the run must succeed)."""
    args = lm_args(pretrained, "b.txt", run_dir, *overrides)
    code, _, err = run(capsys, "lm-train", *args, "--init-from", pretrained / "pre")
    assert code == 0, err
    return err


def test_a_fine_tuning_run_starts_from_the_checkpoint_exactly(pretrained, tmp_path, capsys):
    run_dir = tmp_path / "ft"
    err = fine_tune(capsys, pretrained, run_dir, "train.max_steps=2", "train.lr=0", "train.min_lr=0")
    assert "parameters loaded" in err
    before, after = final_weights(pretrained / "pre", 4), final_weights(run_dir, 2)
    assert before.keys() == after.keys()
    for name in before:  # lr 0: the weights are the checkpoint's, bit for bit
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    # The tokenizer and the model config came along; the source is recorded (a resume does not load it again).
    assert (run_dir / "tokenizer" / "tokenizer.json").read_bytes() == (
        pretrained / "pre" / "tokenizer" / "tokenizer.json"
    ).read_bytes()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["train"]["init_from"].endswith("step-000000004") and saved["model"]["d_model"] == 16
    code, _, err = run(capsys, "lm-train", *lm_args(pretrained, "b.txt", run_dir, "train.max_steps=3"), "--resume")
    assert code == 0, err
    assert "parameters loaded" not in err


def test_frozen_parameters_stay_bit_identical_and_get_no_optimizer_state(pretrained, tmp_path, capsys):
    run_dir = tmp_path / "frozen"
    err = fine_tune(capsys, pretrained, run_dir, "train.max_steps=3", 'train.freeze=["layers.0.*", "token_embed.*"]')
    assert "frozen: layers.0.*, token_embed.*" in err
    before, after = final_weights(pretrained / "pre", 4), final_weights(run_dir, 3)
    frozen = [n for n in before if n.startswith(("layers.0.", "token_embed."))]
    trained = [n for n in before if n not in frozen]
    assert frozen and trained
    for name in frozen:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    assert any(not np.array_equal(before[name], after[name]) for name in trained)
    moments = load_file(str(run_dir / "checkpoints" / "step-000000003" / OPTIMIZER_FILE))
    assert moments and not any(("layers.0." in k or "token_embed." in k) for k in moments)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (['train.freeze=["nothing.*"]'], ["freeze pattern 'nothing.*' matches no parameter"]),
        (['train.freeze=["*"]'], ["freezes every parameter"]),
        (["train.freeze=3"], ["[train] freeze must be a list of name patterns"]),
        (["model.d_model=32"], ["does not fit the model", "mismatched", "init_strict"]),
        (['train.init_reset=["nope.*"]'], ["init_reset pattern 'nope.*' matches no parameter"]),
    ],
)
def test_bad_fine_tuning_settings_are_one_line_errors(pretrained, tmp_path, capsys, overrides, fragments):
    code, _, err = run(
        capsys,
        "lm-train",
        *lm_args(pretrained, "b.txt", tmp_path / "bad", "train.max_steps=2", *overrides),
        "--init-from",
        pretrained / "pre",
    )
    assert_clean_error(code, err, *fragments)


@pytest.mark.parametrize(
    "text, source, extra, fragments",
    [
        ("b.txt", "nowhere", [], ["nowhere"]),
        ("b.txt", "translation", [], ["is a translation checkpoint", "a language model cannot start from it"]),
        ("b.txt", "pre", ["--resume"], ["start a new run"]),
        ("c.txt", "pre", [], ["c.txt", "character ';'", "not in the vocabulary"]),  # outside the tokenizer
    ],
)
def test_init_from_refuses_a_missing_checkpoint_another_kind_a_resume_and_unknown_characters(
    pretrained, tmp_path, capsys, trained_translation, text, source, extra, fragments
):
    origin = {"nowhere": tmp_path / "nowhere", "translation": trained_translation, "pre": pretrained / "pre"}[source]
    run_dir = pretrained / "pre" if extra else tmp_path / "new"
    args = lm_args(pretrained, text, run_dir, "train.max_steps=5")
    code, _, err = run(capsys, "lm-train", *args, *extra, "--init-from", origin)
    assert_clean_error(code, err, *fragments)


@pytest.fixture(scope="module")
def trained_translation(tmp_path_factory):
    from test_cli import config_args
    from transformer import cli

    run_dir = tmp_path_factory.mktemp("mt")
    assert cli.main([str(a) for a in ["train", *config_args(run_dir, "train.max_steps=2")]]) == 0
    return run_dir


def test_a_relaxed_load_keeps_what_does_not_fit_fresh_and_a_larger_vocabulary_extends(pretrained):
    checkpoint = load_checkpoint(next((pretrained / "pre" / "checkpoints").iterdir()))
    config = LMConfig.from_dict(checkpoint.config)
    bigger = LanguageModel(LMConfig(**{**config.to_dict(), "vocab_size": config.vocab_size + 5, "seed": 9}))
    fresh = bigger.state_dict()
    with pytest.raises(ValueError, match="does not fit the model.*token_embed.weight"):
        init_from_checkpoint(bigger, checkpoint.directory)
    report = init_from_checkpoint(bigger, checkpoint.directory, extend_vocab=True)
    assert any(line.startswith("token_embed.weight") for line in report["extended"])
    table = bigger.state_dict()["token_embed.weight"]
    old = checkpoint.model_state["token_embed.weight"]
    np.testing.assert_array_equal(table[: len(old)], old)  # the checkpoint's rows
    np.testing.assert_array_equal(table[len(old) :], fresh["token_embed.weight"][len(old) :])  # new rows stay fresh
    other = LanguageModel(config)
    reset = init_from_checkpoint(other, checkpoint.directory, reset=["layers.1.*"])
    assert reset["reset"] and all(name.startswith("layers.1.") for name in reset["reset"])
    np.testing.assert_array_equal(
        other.state_dict()["layers.0.self_attn.qkv.weight"], checkpoint.model_state["layers.0.self_attn.qkv.weight"]
    )


# ------------------------------------------------------------------------------------------ word-level distillation
def distill(capsys, pretrained, run_dir, *overrides, teacher=None):
    args = lm_args(pretrained, "b.txt", run_dir, "train.max_steps=3", *overrides)
    code, _, err = run(capsys, "lm-train", *args, "--teacher", teacher or pretrained / "pre")
    assert code == 0, err
    return err


def test_distillation_with_weight_0_is_exactly_the_plain_run(pretrained, tmp_path, capsys):
    # (1 - 0) * CE + 0 * KD: the same loss and gradients to the bit, so the same weights after training (the
    # teacher runs in eval mode and draws no random numbers).
    err = distill(capsys, pretrained, tmp_path / "kd0", "train.distill_weight=0")
    assert "distilling from" in err
    plain_dir = tmp_path / "plain"
    shutil_copy_tokenizer(pretrained / "pre", plain_dir)  # the vocabulary the student took from its teacher
    code, _, err = run(capsys, "lm-train", *lm_args(pretrained, "b.txt", plain_dir, "train.max_steps=3"))
    assert code == 0, err
    kd0, plain = final_weights(tmp_path / "kd0", 3), final_weights(plain_dir, 3)
    for name in plain:
        np.testing.assert_array_equal(kd0[name], plain[name], err_msg=name)


def test_distillation_pulls_the_student_towards_the_teacher(pretrained, tmp_path, capsys):
    # With the labels out of the loss (w = 1) the student is trained on the teacher's distribution alone: its KL to
    # the teacher falls.
    import npgrad as ng
    from npgrad import functional as F

    distill(
        capsys,
        pretrained,
        tmp_path / "kd1",
        "train.distill_weight=1",
        "train.distill_temperature=2",
        "train.max_steps=8",
        "train.lr=3e-2",
    )
    teacher = LanguageModel(
        LMConfig.from_dict(load_checkpoint(pretrained / "pre" / "checkpoints" / "step-000000004").config)
    )
    teacher.load_state_dict(final_weights(pretrained / "pre", 4))
    x = np.arange(16).reshape(2, 8) % 20
    kls = []
    for run_dir, step in ((tmp_path / "kd1", 1), (tmp_path / "kd1", 8)):
        student = LanguageModel(teacher.config)
        checkpoints = sorted((run_dir / "checkpoints").iterdir())
        student.load_state_dict(load_file(str(checkpoints[0 if step == 1 else -1] / MODEL_FILE)))
        with ng.no_grad():
            kls.append(float(F.kl_div(student(x).reshape(-1, 28), teacher(x).reshape(-1, 28)).data))
    assert kls[1] < kls[0]


def test_a_teacher_of_another_vocabulary_or_kind_is_refused(pretrained, tmp_path, capsys, trained_translation):
    other = tmp_path / "other"
    (tmp_path / "d.txt").write_text("abc abd abe " * 100, encoding="utf-8")
    code, _, err = run(capsys, "lm-train", *lm_args(tmp_path, "d.txt", other, "train.max_steps=2"))
    assert code == 0, err
    code, _, err = run(
        capsys,
        "lm-train",
        *lm_args(pretrained, "b.txt", tmp_path / "s1", "train.max_steps=2"),
        "--teacher",
        trained_translation,
    )
    assert_clean_error(code, err, "is a translation checkpoint", "cannot learn from it")
    student = tmp_path / "s2"
    shutil_copy_tokenizer(other, student)
    code, _, err = run(
        capsys, "lm-train", *lm_args(tmp_path, "d.txt", student, "train.max_steps=2"), "--teacher", pretrained / "pre"
    )
    assert_clean_error(code, err, "--teacher", "tokenizer differs from the run's")


def shutil_copy_tokenizer(source_run, target_run):
    import shutil

    shutil.copytree(source_run / "tokenizer", target_run / "tokenizer")


# ------------------------------------------------------------------------------------------ LoRA
def test_lora_fine_tuning_trains_only_the_adapters_and_its_checkpoints_decode(pretrained, tmp_path, capsys):
    run_dir = tmp_path / "lora"
    err = fine_tune(capsys, pretrained, run_dir, "train.max_steps=3", "train.lora_rank=2", "train.lr=1e-2")
    assert "LoRA rank 2 on 4 layers" in err and "training 384 of 7,184 parameters (5.3%)" in err
    before, after = final_weights(pretrained / "pre", 4), final_weights(run_dir, 3)
    adapters = [name for name in after if name.endswith((".lora_A", ".lora_B"))]
    assert len(adapters) == 8 and set(after) - set(adapters) == set(before)
    for name in before:  # the base model is frozen: bit-identical
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    assert any(np.any(after[name] != 0) for name in adapters if name.endswith("lora_B"))  # B left zero
    # The checkpoint resumes, and decodes through the merged model; merged equals unmerged.
    code, _, err = run(capsys, "lm-train", *lm_args(pretrained, "b.txt", run_dir, "train.max_steps=4"), "--resume")
    assert code == 0, err
    code, out, err = run(capsys, "lm-eval", "--checkpoint", run_dir, "--text", pretrained / "b.txt")
    assert code == 0, err
    import npgrad as ng
    from npgrad import nn
    from transformer.train import restore_lora

    checkpoint = load_checkpoint(run_dir / "checkpoints" / "step-000000004")
    model = LanguageModel(LMConfig.from_dict(checkpoint.config))
    assert restore_lora(model, checkpoint.model_state, {"lora_alpha": 0.0})
    model.load_state_dict(checkpoint.model_state)
    model.eval()
    x = np.arange(16).reshape(2, 8) % 20
    with ng.no_grad():
        unmerged = model(x).data
        nn.merge_lora(model)
        merged = model(x).data
    np.testing.assert_allclose(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert json.loads(out)["transformer"]["loss"] > 0


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["train.lora_rank=100"], ["rank", "larger than"]),
        (["train.lora_rank=2", 'train.lora_targets=["*.nothing"]'], ["*.nothing", "matches no"]),
        (["train.lora_rank=-1"], ["[train] lora_rank must be a whole number >= 0"]),
        (["train.lora_rank=2", "train.lora_dropout=1"], ["[train] lora_dropout must be a number in [0, 1)"]),
    ],
)
def test_bad_lora_settings_are_one_line_errors(pretrained, tmp_path, capsys, overrides, fragments):
    args = lm_args(pretrained, "b.txt", tmp_path / "bad", "train.max_steps=2", *overrides)
    code, _, err = run(capsys, "lm-train", *args, "--init-from", pretrained / "pre")
    assert_clean_error(code, err, *fragments)


def test_a_translation_student_distils_from_its_teacher_end_to_end(trained_translation, tmp_path, capsys):
    from test_cli import config_args

    student = tmp_path / "student"
    code, out, err = run(
        capsys,
        "train",
        *config_args(
            student, "train.max_steps=3", "model.d_ff=16", "train.distill_weight=0.7", "train.distill_temperature=2"
        ),
        "--teacher",
        trained_translation,
    )
    assert code == 0, err
    assert "distilling from" in err and json.loads(out.strip().splitlines()[-1])["step"] == 3
    code, out, err = run(capsys, "evaluate", "--checkpoint", student, "--beam", 1, "--limit", 2)
    assert code == 0, err


def test_export_a_lora_run_merged_or_as_adapters_alone(pretrained, tmp_path, capsys):
    run_dir = tmp_path / "lora"
    fine_tune(capsys, pretrained, run_dir, "train.max_steps=2", "train.lora_rank=2", "train.lr=1e-2")
    losses = {}
    for how in ("merge", "adapters"):
        out_dir = tmp_path / how
        code, _, err = run(capsys, "export", "--checkpoint", run_dir, "--output", out_dir, f"--{how}")
        assert code == 0, err
        code, out, err = run(capsys, "lm-eval", "--checkpoint", out_dir, "--text", pretrained / "b.txt")
        assert code == 0, err
        losses[how] = json.loads(out)["transformer"]["loss"]
    code, out, _ = run(capsys, "lm-eval", "--checkpoint", run_dir, "--text", pretrained / "b.txt")
    assert losses["merge"] == pytest.approx(json.loads(out)["transformer"]["loss"], rel=1e-6)
    assert losses["adapters"] == pytest.approx(losses["merge"], rel=1e-6)
    adapters = load_file(str(tmp_path / "adapters" / MODEL_FILE))
    assert adapters and all(k.endswith((".lora_A", ".lora_B")) for k in adapters)  # a small file: adapters only
    merged = load_file(str(tmp_path / "merge" / MODEL_FILE))
    assert not any(k.endswith((".lora_A", ".lora_B")) for k in merged)  # a plain checkpoint
    # Refusals: an existing output, a checkpoint without adapters.
    code, _, err = run(capsys, "export", "--checkpoint", run_dir, "--output", tmp_path / "merge", "--merge")
    assert_clean_error(code, err, "--overwrite")
    code, _, err = run(capsys, "export", "--checkpoint", pretrained / "pre", "--output", tmp_path / "x", "--adapters")
    assert_clean_error(code, err, "holds no LoRA adapters")


def test_sequence_level_distillation_writes_the_teachers_translations_and_a_student_trains_on_them(
    trained_translation, tmp_path, capsys
):
    from test_cli import config_args

    out_dir = tmp_path / "distilled"
    code, out, err = run(capsys, "distill", "--teacher", trained_translation, "--output", out_dir, "--beam", 2)
    assert code == 0, err
    summary = json.loads(out)
    sources = (out_dir / "train.de").read_text(encoding="utf-8").splitlines()
    targets = (out_dir / "train.en").read_text(encoding="utf-8").splitlines()
    assert len(sources) == len(targets) == summary["pairs"] > 0
    code, _, err = run(capsys, "distill", "--teacher", trained_translation, "--output", out_dir)
    assert_clean_error(code, err, "exists", "--overwrite")
    student = tmp_path / "student"
    code, out, err = run(
        capsys,
        "train",
        *config_args(
            student,
            "train.max_steps=2",
            f"data.train_src_path={out_dir / 'train.de'}",
            f"data.train_tgt_path={out_dir / 'train.en'}",
        ),
    )
    assert code == 0, err
    saved = json.loads((student / "config.json").read_text())
    assert saved["data"]["train_tgt_path"].endswith("train.en")
    code, _, err = run(
        capsys,
        "train",
        *config_args(tmp_path / "half", "train.max_steps=2", f"data.train_src_path={out_dir / 'train.de'}"),
    )
    assert_clean_error(code, err, "train_src_path and train_tgt_path go together")
