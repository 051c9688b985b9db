import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from transformer.ngram import KneserNeyLM


@given(
    order=st.integers(1, 4),
    vocab=st.integers(2, 9),
    seed=st.integers(0, 10_000),
    context=st.lists(st.integers(0, 8), max_size=5),
)
def test_distribution_sums_to_one_for_any_context(order, vocab, seed, context):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=200)
    lm = KneserNeyLM(order, vocab).fit(ids)
    context = [c % vocab for c in context]
    p = lm.distribution(context)
    assert p.shape == (vocab,)
    assert np.all(p > 0)
    assert abs(p.sum() - 1.0) < 1e-12


def test_perplexity_is_exp_of_mean_token_loss_and_beats_uniform():
    text = "the cat sat on the mat. the dog sat on the log. " * 40
    vocab = sorted(set(text))
    ids = np.array([vocab.index(c) for c in text])
    lm = KneserNeyLM(3, len(vocab)).fit(ids[:1500])
    r = lm.evaluate(ids[1500:])
    lp = lm.token_log_probs(ids[1500:])
    assert r["loss"] == pytest.approx(-lp.mean())
    assert r["perplexity"] == pytest.approx(math.exp(-lp.mean()))
    assert r["perplexity"] < len(vocab) / 3


def test_higher_order_fits_repetitive_text_better():
    ids = np.tile(np.arange(7), 100)
    lo = KneserNeyLM(1, 7).fit(ids).evaluate(ids)["loss"]
    hi = KneserNeyLM(3, 7).fit(ids).evaluate(ids)["loss"]
    assert hi < lo


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 3 tokens"):
        KneserNeyLM(3, 5).fit([1, 2])
    with pytest.raises(ValueError, match="position 2"):
        KneserNeyLM(2, 5).fit([1, 2, 7, 1])
    with pytest.raises(ValueError, match="int64"):
        KneserNeyLM(6, 8000)
    with pytest.raises(RuntimeError, match="fit"):
        KneserNeyLM(2, 5).evaluate([1, 2])
