"""Gradient flow (transformer/gradflow.py): per-layer gradient norms and update ratios in log.jsonl on the logging
steps, computed from the per-parameter norms that clipping reuses; a warning names a layer whose gradient is
non-finite or vanishes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import npgrad as ng
from npgrad import optim

from test_cli import config_args, run
from transformer.gradflow import VANISHING, GradientFlow, layer_of, problems

STEPS = ["train.max_steps=4", "train.validate_every=4", "train.log_every=2", "train.bleu_max_sentences=2"]


def records(run_dir, kind):
    lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_layer_of_groups_parameters_by_sub_module():
    assert layer_of("encoder_layers.0.self_attn.qkv.weight") == "encoder_layers.0.self_attn"
    assert layer_of("decoder_layers.11.norm2.bias") == "decoder_layers.11.norm2"
    assert layer_of("layers.3.self_attn.q_proj.lora_A") == "layers.3.self_attn"
    assert layer_of("src_embed.weight") == "src_embed"
    assert layer_of("positions.embedding.weight") == "positions"
    assert layer_of("scale") == "scale"


def test_grad_norms_are_what_clipping_combines():
    rng = np.random.default_rng(0)
    params = [ng.tensor(rng.standard_normal(s), requires_grad=True) for s in ((3, 4), (5,), (2,))]
    for p in params[:2]:
        p.grad = rng.standard_normal(p.shape)
    norms = optim.grad_norms(params)
    assert norms[2] == 0.0 and norms[0] == pytest.approx(np.linalg.norm(params[0].grad), rel=1e-12)
    copies = [p.grad.copy() for p in params[:2]]
    total = optim.clip_grad_norm_(params, 0.5, norms=norms)
    assert total == pytest.approx(math.sqrt(sum(float((g**2).sum()) for g in copies)), rel=1e-12)
    with pytest.raises(ValueError, match="one L2 norm per parameter"):
        optim.clip_grad_norm_(params, 0.5, norms=norms[:2])


def test_records_name_nonfinite_and_vanishing_layers_and_ratios_are_exact():
    names = ["a.0.x.weight", "a.0.x.bias", "a.0.y.weight", "head.weight"]
    params = [ng.tensor(np.full((2, 2), 2.0), requires_grad=True) for _ in names]
    flow = GradientFlow(names, params)
    assert list(flow.layers) == ["a.0.x", "a.0.y", "head"]
    params[0].grad, params[1].grad = np.full((2, 2), 3.0), np.full((2, 2), 4.0)
    params[2].grad, params[3].grad = np.zeros((2, 2)), np.full((2, 2), np.nan)
    before = flow.snapshot()
    params[0].data += 1.0  # an "update" of 1 per element: ||dw|| = 2, ||w|| of the layer = sqrt(2 * 16)
    record = flow.record(flow.grad_norms(), before)
    assert record["grad_norm"]["a.0.x"] == pytest.approx(10.0)  # sqrt(4 * 9 + 4 * 16)
    assert record["update_ratio"]["a.0.x"] == pytest.approx(2.0 / math.sqrt(32.0))
    assert record["update_ratio"]["head"] == 0.0
    assert record["nonfinite"] == ["head"] and record["vanishing"] == ["a.0.y"]
    # the threshold is relative to the largest layer's norm in the same step
    assert problems({"a": 1.0, "b": 0.5 * VANISHING, "c": 2 * VANISHING}) == ([], ["b"])
    assert problems({"a": 0.0, "b": 0.0}) == ([], ["a", "b"])


def test_training_logs_gradient_flow_on_logging_steps(tmp_path, capsys):
    code, _, err = run(capsys, "train", *config_args(tmp_path / "run", *STEPS, "train.clip_norm=1.0"))
    assert code == 0, err
    grads = records(tmp_path / "run", "gradients")
    assert [r["step"] for r in grads] == [2, 4]
    for r in grads:
        assert set(r["grad_norm"]) == set(r["update_ratio"])
        assert {"src_embed", "encoder_layers.0.self_attn", "decoder_layers.0.cross_attn"} <= set(r["grad_norm"])
        values = list(r["grad_norm"].values()) + list(r["update_ratio"].values())
        assert all(math.isfinite(v) and v > 0 for v in values), r
        assert "nonfinite" not in r and "vanishing" not in r
    # the layers' norms combine into the (pre-clipping) total the train record holds
    total = {r["step"]: r["grad_norm"] for r in records(tmp_path / "run", "train")}
    for r in grads:
        assert math.sqrt(sum(v * v for v in r["grad_norm"].values())) == pytest.approx(total[r["step"]], rel=1e-9)
    assert "warning" not in err


def test_a_dead_layer_is_warned_about(tmp_path, capsys, monkeypatch):
    measure = GradientFlow.grad_norms

    def with_dead_norm(self):  # as if encoder_layers.0.norm1 received no gradient at all
        for i in self.layers["encoder_layers.0.norm1"]:
            self.params[i].grad[...] = 0.0
        return measure(self)

    monkeypatch.setattr(GradientFlow, "grad_norms", with_dead_norm)
    code, _, err = run(capsys, "train", *config_args(tmp_path / "run", *STEPS))
    assert code == 0, err
    assert "warning: step 2: vanishing gradient" in err and "encoder_layers.0.norm1 (0)" in err
    assert all(r["vanishing"] == ["encoder_layers.0.norm1"] for r in records(tmp_path / "run", "gradients"))


def test_a_nonfinite_gradient_is_named_on_any_step_when_clipping(tmp_path, capsys, monkeypatch):
    clip = optim.clip_grad_norm_

    def poisoned(params, *args, **kwargs):  # step 1, not a logging step: clipping's total is all we have
        params[-1].grad[...] = np.inf
        return clip(params, *args, **kwargs)

    monkeypatch.setattr(optim, "clip_grad_norm_", poisoned)
    code, _, err = run(capsys, "train", *config_args(tmp_path / "run", *STEPS, "train.clip_norm=1.0"))
    assert code != 0  # the weights become NaN, then the loss: the run stops as before
    warned = [line for line in err.splitlines() if "non-finite gradient" in line]
    assert warned and warned[0].startswith("warning: step 1: non-finite gradient in "), err
    assert records(tmp_path / "run", "gradients")[0]["nonfinite"]
