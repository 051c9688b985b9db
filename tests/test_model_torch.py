"""Differential test of the whole encoder-decoder against PyTorch (as llm.c's test_gpt2 checks its GPT-2).

The PyTorch twin of the model (benchmarks/torch_twins.py, the one the benchmarks time) gets our weights, and on
the same padded batch the logits, the label-smoothed loss and the gradient of every parameter must agree in
float64. Skipped when torch is not installed (it is never a run-time dependency).
"""

import numpy as np
import pytest

import npgrad as ng
from transformer.model import LanguageModel, LMConfig, Transformer, TransformerConfig

torch = pytest.importorskip("torch")
from benchmarks import torch_twins  # noqa: E402

V, C, H, FF, PAD = 11, 16, 2, 32, 0


@pytest.fixture(autouse=True)
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


@pytest.mark.parametrize("norm_first, activation", [(False, "relu"), (True, "gelu")])
def test_logits_loss_and_every_gradient_match_pytorch(norm_first, activation):
    torch.manual_seed(0)
    n_layers = 2
    ours = Transformer(
        TransformerConfig(
            src_vocab_size=V,
            tgt_vocab_size=V,
            d_model=C,
            n_heads=H,
            num_encoder_layers=n_layers,
            num_decoder_layers=n_layers,
            d_ff=FF,
            dropout=0.0,
            activation=activation,
            norm_first=norm_first,
            positional="sinusoidal",
            max_len=32,
            dtype="float64",
            seed=3,
        )
    )
    theirs = torch_twins.Seq2SeqTwin(**ours.config.to_dict())
    # Every parameter on both sides is mapped (load_npgrad_weights refuses a difference in names).
    weights = {name: p.data for name, p in ours.named_parameters()}
    assert weights.keys() == dict(theirs.named_parameters()).keys()
    torch_twins.load_npgrad_weights(theirs, weights)

    rng = np.random.default_rng(0)
    src = rng.integers(4, V, size=(3, 7))
    src[0, 5:] = PAD
    src[2, 2:] = PAD
    tgt = rng.integers(4, V, size=(3, 6))
    tgt[:, 0] = 2
    tgt[1, 4:] = PAD
    target = np.concatenate([tgt[:, 1:], rng.integers(4, V, size=(3, 1))], axis=1)
    target[tgt == PAD] = PAD

    logits = ours(src, tgt)
    their_logits = theirs(torch.from_numpy(src), torch.from_numpy(tgt))
    np.testing.assert_allclose(logits.data, their_logits.detach().numpy(), rtol=1e-10, atol=1e-11)

    # Label-smoothed cross-entropy over non-pad targets plus a random projection of all the logits,
    # so that every position (padded ones included) sends gradient back.
    projection = rng.standard_normal(logits.shape)
    loss = ours.loss(logits, target, label_smoothing=0.1) + (logits * projection).sum() * 0.01
    their_loss = (
        theirs.loss(their_logits, torch.from_numpy(target), label_smoothing=0.1)
        + (their_logits * torch.from_numpy(projection)).sum() * 0.01
    )
    assert loss.item() == pytest.approx(their_loss.item(), rel=1e-12)
    loss.backward()
    their_loss.backward()

    mine = {name: p.grad for name, p in ours.named_parameters()}
    reference = torch_twins.npgrad_gradients(theirs)
    assert mine.keys() == reference.keys()
    for name in reference:
        scale = np.abs(reference[name]).max()
        np.testing.assert_allclose(
            mine[name], reference[name], rtol=1e-9, atol=1e-11 * max(scale, 1.0), err_msg=f"gradient of {name}"
        )


@pytest.mark.parametrize(
    "options",
    [
        dict(bias=False, norm_first=True, activation="gelu"),  # nanoGPT's
        dict(bias=True, norm_first=False, activation="relu", positional="sinusoidal"),
    ],
)
def test_language_model_logits_loss_and_every_gradient_match_pytorch(options):
    """The decoder-only twin, the PyTorch contender of the nanoGPT and step benchmarks."""
    ours = LanguageModel(
        LMConfig(
            vocab_size=V, d_model=C, n_heads=H, n_layers=2, d_ff=FF, block_size=8, dtype="float64", seed=4, **options
        )
    )
    theirs = torch_twins.LanguageModelTwin(**ours.config.to_dict())
    torch_twins.load_npgrad_weights(theirs, {name: p.data for name, p in ours.named_parameters()})
    rng = np.random.default_rng(1)
    ids, target = rng.integers(0, V, size=(3, 8)), rng.integers(0, V, size=(3, 8))

    logits = ours(ids)
    their_logits = theirs(torch.from_numpy(ids))
    np.testing.assert_allclose(logits.data, their_logits.detach().numpy(), rtol=1e-10, atol=1e-11)
    loss, their_loss = ours.loss(logits, target), theirs.loss(their_logits, torch.from_numpy(target))
    assert loss.item() == pytest.approx(their_loss.item(), rel=1e-12)
    loss.backward()
    their_loss.backward()
    reference = torch_twins.npgrad_gradients(theirs)
    assert reference.keys() == {name for name, _ in ours.named_parameters()}
    for name, p in ours.named_parameters():
        scale = np.abs(reference[name]).max()
        np.testing.assert_allclose(
            p.grad, reference[name], rtol=1e-9, atol=1e-11 * max(scale, 1.0), err_msg=f"gradient of {name}"
        )
