"""The whole stack learns: a small Transformer overfits a 10-sentence copy task to exact reproduction."""

import numpy as np

import npgrad as ng
from npgrad import functional as F
from npgrad import optim
from transformer import search
from transformer.data import collate
from transformer.model import Transformer, TransformerConfig


def test_overfits_ten_sentence_copy_task_within_a_few_hundred_steps():
    rng = np.random.default_rng(0)
    vocab = 16  # ids 0-3 are pad/unk/bos/eos
    sentences = [list(rng.integers(4, vocab, size=rng.integers(3, 8))) for _ in range(10)]
    batch = collate(sentences, sentences)  # src = x + EOS, tgt_in = BOS + x, tgt_out = x + EOS
    config = TransformerConfig(
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        d_model=32,
        n_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=1,
        d_ff=64,
        dropout=0.0,
        share_embeddings=True,
        max_len=16,
        seed=0,
    )
    model = Transformer(config)
    optimizer = optim.Adam(list(model.named_parameters()), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)

    def reproduced():
        out = search.greedy(model, batch.src, max_len=12)
        return [list(map(int, t)) for t in out.tokens] == [list(map(int, s)) for s in sentences]

    with ng.use_backend("numpy"):
        for step in range(1, 401):
            model.train()
            optimizer.zero_grad()
            logits = model(batch.src, batch.tgt_in)
            loss = F.cross_entropy(logits.reshape(-1, vocab), batch.tgt_out.reshape(-1), ignore_index=0)
            loss.backward()
            optimizer.step()
            if step % 50 == 0 and reproduced():
                break
        assert reproduced(), f"not reproduced after {step} steps (loss {float(loss.data):.4f})"
    assert step <= 400
