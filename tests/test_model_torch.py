"""Differential test of the whole encoder-decoder against PyTorch (as llm.c's test_gpt2 checks its GPT-2).

An equivalent model is assembled from torch.nn's own Transformer layers, our weights are copied into it,
and on the same padded batch the logits, the label-smoothed loss and the gradient of every parameter
must agree in float64. Skipped when torch is not installed (it is never a run-time dependency).
"""
import numpy as np
import pytest

import npgrad as ng
from transformer.model import Transformer, TransformerConfig

torch = pytest.importorskip("torch")

V, C, H, FF, PAD = 11, 16, 2, 32, 0


@pytest.fixture(autouse=True)
def numpy_backend():
    with ng.use_backend("numpy"):
        yield


class TorchSeq2Seq(torch.nn.Module):
    """Vaswani et al.'s model from torch.nn layers: scaled embeddings + sinusoids, tied output projection."""

    def __init__(self, n_layers, norm_first, activation):
        super().__init__()
        nn = torch.nn
        self.src_embed = nn.Embedding(V, C, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(V, C, padding_idx=PAD)
        layer = dict(d_model=C, nhead=H, dim_feedforward=FF, dropout=0.0, activation=activation,
                     batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer), n_layers,
                                             norm=nn.LayerNorm(C) if norm_first else None,
                                             enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer), n_layers,
                                             norm=nn.LayerNorm(C) if norm_first else None)

    def forward(self, src, tgt, positions):
        scale = C ** 0.5
        src_pad, tgt_pad = src == PAD, tgt == PAD                                # True = ignore (torch's sense)
        causal = torch.triu(torch.ones(tgt.shape[1], tgt.shape[1], dtype=torch.bool), diagonal=1)
        x = self.src_embed(src) * scale + positions[: src.shape[1]]
        memory = self.encoder(x, src_key_padding_mask=src_pad)
        y = self.tgt_embed(tgt) * scale + positions[: tgt.shape[1]]
        h = self.decoder(y, memory, tgt_mask=causal, tgt_key_padding_mask=tgt_pad,
                         memory_key_padding_mask=src_pad)
        return h @ self.tgt_embed.weight.T                                        # tied output projection


def correspondence(ours, theirs, n_layers, norm_first):
    """(our parameter name, torch parameter, to_torch(array), from_torch(grad)) for every parameter.

    Our Linear weights are (in, out) and are applied as x @ W; torch's are (out, in): a transpose.
    Our fused q/k/v (C, 3C) is torch's in_proj_weight (3C, C) transposed; our cross-attention's q_proj
    (C, C) and kv_proj (C, 2C) side by side are the same thing.
    """
    T = (lambda a: a.T, lambda g: g.T)
    same = (lambda a: a, lambda g: g)
    pairs = [("src_embed.weight", theirs.src_embed.weight, same), ("tgt_embed.weight", theirs.tgt_embed.weight, same)]

    def attention(prefix, torch_mha, fused=True):
        if fused:
            pairs.append((f"{prefix}.qkv.weight", torch_mha.in_proj_weight, T))
            pairs.append((f"{prefix}.qkv.bias", torch_mha.in_proj_bias, same))
        else:
            pairs.append(("CROSS", prefix, torch_mha))
        pairs.append((f"{prefix}.out_proj.weight", torch_mha.out_proj.weight, T))
        pairs.append((f"{prefix}.out_proj.bias", torch_mha.out_proj.bias, same))

    def feed_forward(prefix, torch_layer):
        for n in (1, 2):
            pairs.append((f"{prefix}.feed_forward.linear{n}.weight", getattr(torch_layer, f"linear{n}").weight, T))
            pairs.append((f"{prefix}.feed_forward.linear{n}.bias", getattr(torch_layer, f"linear{n}").bias, same))

    def norm(name, torch_norm):
        pairs.append((f"{name}.weight", torch_norm.weight, same))
        pairs.append((f"{name}.bias", torch_norm.bias, same))

    for i, layer in enumerate(theirs.encoder.layers):
        attention(f"encoder_layers.{i}.self_attn", layer.self_attn)
        feed_forward(f"encoder_layers.{i}", layer)
        norm(f"encoder_layers.{i}.norm1", layer.norm1)
        norm(f"encoder_layers.{i}.norm2", layer.norm2)
    for i, layer in enumerate(theirs.decoder.layers):
        attention(f"decoder_layers.{i}.self_attn", layer.self_attn)
        attention(f"decoder_layers.{i}.cross_attn", layer.multihead_attn, fused=False)
        feed_forward(f"decoder_layers.{i}", layer)
        for n in (1, 2, 3):
            norm(f"decoder_layers.{i}.norm{n}", getattr(layer, f"norm{n}"))
    if norm_first:
        norm("encoder_norm", theirs.encoder.norm)
        norm("decoder_norm", theirs.decoder.norm)
    return pairs


def copy_weights(ours, theirs, pairs):
    params = dict(ours.named_parameters())
    with torch.no_grad():
        for name, target, how in pairs:
            if name == "CROSS":
                prefix, mha = target, how
                w = np.concatenate([params[f"{prefix}.q_proj.weight"].data, params[f"{prefix}.kv_proj.weight"].data], 1)
                b = np.concatenate([params[f"{prefix}.q_proj.bias"].data, params[f"{prefix}.kv_proj.bias"].data])
                mha.in_proj_weight.copy_(torch.from_numpy(w.T.copy()))
                mha.in_proj_bias.copy_(torch.from_numpy(b))
            else:
                target.copy_(torch.from_numpy(np.ascontiguousarray(how[0](params[name].data))))


def gradients_of_ours(ours, pairs):
    """Our gradients, keyed as in ``pairs`` (the cross-attention q/kv blocks re-joined as torch's in_proj)."""
    params = dict(ours.named_parameters())
    out = {}
    for name, target, how in pairs:
        if name == "CROSS":
            prefix = target
            out[prefix + ".in_proj_weight"] = np.concatenate(
                [params[f"{prefix}.q_proj.weight"].grad, params[f"{prefix}.kv_proj.weight"].grad], 1).T
            out[prefix + ".in_proj_bias"] = np.concatenate(
                [params[f"{prefix}.q_proj.bias"].grad, params[f"{prefix}.kv_proj.bias"].grad])
        else:
            out[name] = how[0](params[name].grad)                               # in torch's layout
    return out


def gradients_of_theirs(pairs):
    out = {}
    for name, target, how in pairs:
        if name == "CROSS":
            out[target + ".in_proj_weight"] = how.in_proj_weight.grad.numpy()
            out[target + ".in_proj_bias"] = how.in_proj_bias.grad.numpy()
        else:
            out[name] = target.grad.numpy()
    return out


@pytest.mark.parametrize("norm_first, activation", [(False, "relu"), (True, "gelu")])
def test_logits_loss_and_every_gradient_match_pytorch(norm_first, activation):
    torch.manual_seed(0)
    n_layers = 2
    ours = Transformer(TransformerConfig(
        src_vocab_size=V, tgt_vocab_size=V, d_model=C, n_heads=H, num_encoder_layers=n_layers,
        num_decoder_layers=n_layers, d_ff=FF, dropout=0.0, activation=activation, norm_first=norm_first,
        positional="sinusoidal", max_len=32, dtype="float64", seed=3))
    theirs = TorchSeq2Seq(n_layers, norm_first, activation).double()
    pairs = correspondence(ours, theirs, n_layers, norm_first)
    # Every parameter on both sides is mapped (a cross-attention's 4 arrays are torch's 2 in_proj ones).
    n_cross = sum(1 for name, _, _ in pairs if name == "CROSS")
    n_torch = sum(1 for _ in theirs.parameters())
    assert len(pairs) + n_cross == n_torch and len(list(ours.parameters())) == n_torch + 2 * n_cross
    copy_weights(ours, theirs, pairs)

    rng = np.random.default_rng(0)
    src = rng.integers(4, V, size=(3, 7))
    src[0, 5:] = PAD
    src[2, 2:] = PAD
    tgt = rng.integers(4, V, size=(3, 6))
    tgt[:, 0] = 2
    tgt[1, 4:] = PAD
    target = np.concatenate([tgt[:, 1:], rng.integers(4, V, size=(3, 1))], axis=1)
    target[tgt == PAD] = PAD
    positions = torch.from_numpy(ours.src_positions.table.astype(np.float64))

    logits = ours(src, tgt)
    their_logits = theirs(torch.from_numpy(src), torch.from_numpy(tgt), positions)
    np.testing.assert_allclose(logits.data, their_logits.detach().numpy(), rtol=1e-10, atol=1e-11)

    # Label-smoothed cross-entropy over non-pad targets plus a random projection of all the logits,
    # so that every position (padded ones included) sends gradient back.
    projection = rng.standard_normal(logits.shape)
    loss = ours.loss(logits, target, label_smoothing=0.1) + (logits * projection).sum() * 0.01
    their_loss = (torch.nn.functional.cross_entropy(their_logits.reshape(-1, V), torch.from_numpy(target).reshape(-1),
                                                    ignore_index=PAD, label_smoothing=0.1)
                  + (their_logits * torch.from_numpy(projection)).sum() * 0.01)
    assert loss.item() == pytest.approx(their_loss.item(), rel=1e-12)
    loss.backward()
    their_loss.backward()

    mine, reference = gradients_of_ours(ours, pairs), gradients_of_theirs(pairs)
    assert mine.keys() == reference.keys()
    for name in reference:
        scale = np.abs(reference[name]).max()
        np.testing.assert_allclose(mine[name], reference[name], rtol=1e-9, atol=1e-11 * max(scale, 1.0),
                                   err_msg=f"gradient of {name}")
