"""Decoding: greedy, beam search and sampling on tiny real models (transformer.model), float64.

Properties: beam 1 == greedy; cache == no cache (tokens equal, scores to 1e-9); n-best sorted and scored as documented;
the length penalty picks the documented winner; length limits obeyed; sampling reproducible, top_k=1 == greedy,
top-p keeps the smallest nucleus, empirical frequencies match; bad arguments raise clear errors.
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest

import npgrad as ng
from transformer import search
from transformer.model import LanguageModel, LMConfig, Transformer, TransformerConfig

V = 20  # target/source vocabulary of the tiny models
PAD, BOS, EOS = 0, 2, 3


class EOSBiased:
    """A real Transformer with a length-dependent EOS prior added to its logits: eos += slope * (position - onset).

    Random tiny Transformers rarely emit EOS; the bias makes sentences end at varied lengths so the EOS paths of the
    search are exercised. It is added identically in ``decode_step`` (position = state.step before the call) and in
    ``forward`` (position = column), so with and without the cache the model is the same function.
    """

    def __init__(self, model, slope=0.8, onset=4.0):
        self.model, self.config, self.slope, self.onset = model, model.config, slope, onset

    training = property(lambda self: self.model.training)

    def train(self, mode=True):
        self.model.train(mode)

    def eval(self):
        self.model.eval()

    def encode(self, src):
        return self.model.encode(src)

    def start_decoding(self, memory, src_pad):
        return self.model.start_decoding(memory, src_pad)

    def decode_step(self, tokens, state):
        position = state.step
        logits = self.model.decode_step(tokens, state).data.copy()  # (N, V)
        logits[:, EOS] += self.slope * (position - self.onset)
        return ng.tensor(logits)

    def forward(self, src, tgt_in):
        logits = self.model.forward(src, tgt_in).data.copy()  # (N, T, V)
        logits[:, :, EOS] += self.slope * (np.arange(tgt_in.shape[1]) - self.onset)
        return ng.tensor(logits)


def _randomise(model, seed, scale=1.0):
    """Weights N(0, scale^2) (norms untouched): sharper, more source-dependent predictions than the default init."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.data[...] = rng.normal(0.0, scale, p.shape)
    return model


def tiny_seq2seq(positional="sinusoidal", seed=1, dtype="float64", norm_first=False):
    cfg = TransformerConfig(
        src_vocab_size=V,
        tgt_vocab_size=V,
        d_model=16,
        n_heads=2,
        num_encoder_layers=1,
        num_decoder_layers=2,
        d_ff=32,
        dropout=0.0,
        dtype=dtype,
        max_len=40,
        seed=seed,
        positional=positional,
        tie_output=False,
        norm_first=norm_first,
    )
    model = _randomise(Transformer(cfg), seed)
    model.eval()
    return EOSBiased(model)


def source_batch(seed=0, B=5, S=7):
    rng = np.random.default_rng(seed)
    src = rng.integers(4, V, size=(B, S))
    src[1, 3:] = PAD  # padded sentences: the cache must carry the source mask through reorder
    src[B - 1, 5:] = PAD
    return src


@pytest.fixture(scope="module", autouse=True)
def numpy_backend():
    """The NumPy reference kernels: no JIT compilation in these short runs (the kernels are tested elsewhere)."""
    with ng.use_backend("numpy"):
        yield


@pytest.fixture(scope="module")
def seq2seq():
    return tiny_seq2seq()


@pytest.fixture(scope="module")
def src():
    return source_batch()


def _key(result):
    return [[(h.tokens, h.ended) for h in hyps] for hyps in result]


# --------------------------------------------------------------------------------------------------- greedy / beam
def test_greedy_outputs_are_valid_and_varied(seq2seq, src):
    out = search.greedy(seq2seq, src, max_len=12)
    assert len(out.tokens) == src.shape[0] and out.scores.shape == (src.shape[0],)
    assert out.scores.dtype == np.float64
    lengths = [len(t) for t in out.tokens]
    assert len(set(lengths)) > 1, "the fixture should end sentences at different lengths"
    for tokens, ended in zip(out.tokens, out.ended):
        assert EOS not in tokens and BOS not in tokens and PAD not in tokens
        assert ended or len(tokens) == 12


def rescore(model, src_row, tokens, ended):
    """Sum of log-probs of ``tokens`` (+ EOS if ``ended``) given ``src_row`` (S,), teacher-forced by ``forward``."""
    tgt_in = np.array([[BOS] + tokens], dtype=np.int64)
    logits = model.forward(src_row[None], tgt_in).data[0]  # (T, V)
    shift = logits.max(1, keepdims=True)
    log_probs = logits - shift - np.log(np.exp(logits - shift).sum(1, keepdims=True))
    chosen = tokens + ([EOS] if ended else [])
    return sum(log_probs[t, tok] for t, tok in enumerate(chosen))


def test_greedy_scores_are_sum_of_log_probs_of_the_chosen_tokens(seq2seq, src):
    out = search.greedy(seq2seq, src, max_len=12)
    for i, (tokens, ended) in enumerate(zip(out.tokens, out.ended)):
        assert abs(out.scores[i] - rescore(seq2seq, src[i], tokens, ended)) < 1e-9


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_scores_equal_rescoring_by_forward(seq2seq, src, use_cache):
    """Every n-best hypothesis's score is the model's log-probability of it: catches a beam that follows the wrong
    cache rows (the scores would belong to other prefixes)."""
    beams = search.beam_search(seq2seq, src, beam_size=4, nbest=4, max_len=12, alpha=0.6, use_cache=use_cache)
    for i, hyps in enumerate(beams):
        for h in hyps:
            assert abs(h.score - rescore(seq2seq, src[i], h.tokens, h.ended)) < 1e-9


@pytest.mark.parametrize("alpha,early", [(0.0, False), (0.0, True), (0.6, True), (1.5, True)])
def test_beam_size_one_equals_greedy(seq2seq, src, alpha, early):
    g = search.greedy(seq2seq, src, max_len=12)
    b = search.beam_search(seq2seq, src, beam_size=1, max_len=12, alpha=alpha, early_stopping=early)
    assert [h[0].tokens for h in b] == g.tokens
    assert [h[0].ended for h in b] == list(g.ended)
    np.testing.assert_allclose([h[0].score for h in b], g.scores, rtol=0, atol=1e-12)


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "relative", "rope", "alibi"])
def test_greedy_and_beam_same_with_and_without_cache(positional):
    model, src = tiny_seq2seq(positional, seed=2), source_batch(seed=3, B=4)
    g1 = search.greedy(model, src, max_len=10)
    g0 = search.greedy(model, src, max_len=10, use_cache=False)
    assert g1.tokens == g0.tokens
    np.testing.assert_allclose(g1.scores, g0.scores, rtol=0, atol=1e-9)
    b1 = search.beam_search(model, src, beam_size=3, nbest=3, max_len=10, alpha=0.6)
    b0 = search.beam_search(model, src, beam_size=3, nbest=3, max_len=10, alpha=0.6, use_cache=False)
    assert _key(b1) == _key(b0)
    for hyps1, hyps0 in zip(b1, b0):
        for h1, h0 in zip(hyps1, hyps0):
            assert abs(h1.score - h0.score) < 1e-9 and abs(h1.normalized_score - h0.normalized_score) < 1e-9


def test_float32_decoding_keeps_float32_scores():
    model = tiny_seq2seq(dtype="float32")
    out = search.greedy(model, source_batch(), max_len=6)
    assert out.scores.dtype == np.float32


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_nbest_sorted_and_scored_as_documented(seq2seq, src, alpha):
    beams = search.beam_search(seq2seq, src, beam_size=4, nbest=4, max_len=12, alpha=alpha)
    for hyps in beams:
        assert 1 <= len(hyps) <= 4
        norms = [h.normalized_score for h in hyps]
        assert norms == sorted(norms, reverse=True)
        assert len({tuple(h.tokens) + (h.ended,) for h in hyps}) == len(hyps), "duplicates in the n-best"
        for h in hyps:
            assert h.length == len(h.tokens) + int(h.ended)
            assert math.isclose(h.normalized_score, h.score / ((5 + h.length) / 6) ** alpha, rel_tol=1e-12)
            assert h.ended or h.length == 12
            assert h.score <= 0


def test_beam_best_is_at_least_as_good_as_greedy_under_alpha_zero(seq2seq, src):
    g = search.greedy(seq2seq, src, max_len=12)
    b = search.beam_search(seq2seq, src, beam_size=5, max_len=12, alpha=0.0)
    assert all(h[0].score >= s - 1e-12 for h, s in zip(b, g.scores))


def test_length_limits_follow_max_len_a_b(seq2seq):
    src = source_batch(B=3)
    src[0, 2:] = PAD  # source lengths 2, 3, 5
    src_len = (src != PAD).sum(1)
    g = search.greedy(seq2seq, src, max_len=50, max_len_a=0.5, max_len_b=1)
    b = search.beam_search(seq2seq, src, beam_size=3, max_len=50, max_len_a=0.5, max_len_b=1, nbest=3)
    limits = np.floor(0.5 * src_len + 1).astype(int)
    for i in range(3):
        assert len(g.tokens[i]) + int(g.ended[i]) <= limits[i]
        assert all(h.length <= limits[i] for h in b[i])
    with pytest.raises(ValueError, match="max_len_b"):
        search.greedy(seq2seq, src, max_len_a=1.0)


# ---------------------------------------------------------------------------- scripted model (exact expectations)
class Scripted:
    """Next-token log-probs from a table indexed by (number of tokens fed, last token fed): a model whose every
    probability is known, to check which hypothesis the search must return."""

    def __init__(self, table):
        self.table = np.log(np.asarray(table, dtype=np.float64) + 1e-300)  # (T, V, V)
        self.config = SimpleNamespace(bos_id=BOS, eos_id=EOS, pad_id=PAD, src_vocab_size=V, max_len=None)

    class State:
        def __init__(self, n):
            self.step, self.batch = 0, n

        def reorder(self, index):
            self.batch = len(index)

    def encode(self, src):
        return ng.tensor(np.zeros(src.shape + (1,))), src != PAD

    def start_decoding(self, memory, src_pad):
        return Scripted.State(memory.shape[0])

    def decode_step(self, tokens, state):
        logits = self.table[state.step, tokens]
        state.step += 1
        return ng.tensor(logits)

    def forward(self, src, tgt_in):
        return ng.tensor(self.table[np.arange(tgt_in.shape[1]), tgt_in])


def _short_vs_long_table():
    """Step 0: EOS 0.5, token 4 0.5. After 4: EOS 0.9, token 5 0.1. After 5: EOS 1. So the hypotheses are
    [] (EOS at once: log 0.5, length 1), [4] (log 0.45, length 2), [4, 5] (log 0.05, length 3)."""
    table = np.full((4, V, V), 0.0)
    table[0, BOS, EOS], table[0, BOS, 4] = 0.5, 0.5
    table[1, 4, EOS], table[1, 4, 5] = 0.9, 0.1
    table[2, 5, EOS] = 1.0
    table[3, :, EOS] = 1.0
    return table


@pytest.mark.parametrize("use_cache", [True, False])
def test_length_penalty_decides_between_short_and_long(use_cache):
    model, src = Scripted(_short_vs_long_table()), np.full((2, 3), 5)
    # alpha = 0: log 0.5 > log 0.45 -> the empty hypothesis wins.
    short = search.beam_search(model, src, beam_size=2, nbest=2, max_len=5, alpha=0.0, use_cache=use_cache)
    assert [h.tokens for h in short[0]] == [[], [4]] and short[0] == short[1]
    # alpha = 1: log(0.5)/1 = -0.693 < log(0.45)/(7/6) = -0.684 -> the longer one wins although its sum is lower.
    long = search.beam_search(model, src, beam_size=2, nbest=2, max_len=5, alpha=1.0, use_cache=use_cache)
    assert [h.tokens for h in long[0]] == [[4], []]
    assert math.isclose(long[0][0].score, math.log(0.45)) and long[0][0].length == 2
    assert math.isclose(long[0][0].normalized_score, math.log(0.45) / (7 / 6))
    # Greedy follows the sums (ties to the lower id: EOS=3 < 4).
    assert search.greedy(model, src, max_len=5, use_cache=use_cache).tokens == [[], []]


def test_search_does_not_stop_while_a_live_hypothesis_can_still_win():
    """Beam 1: EOS at once (normalised log 0.5) vs a live [4] whose best reachable normalised score under alpha=1,
    log(0.5)/lp(2) = -0.59 > -0.69: the exact criterion keeps searching and finds [4]; early stopping does not."""
    model, src = Scripted(_short_vs_long_table()), np.full((1, 3), 5)
    exact = search.beam_search(model, src, beam_size=1, max_len=5, alpha=1.0)
    early = search.beam_search(model, src, beam_size=1, max_len=5, alpha=1.0, early_stopping=True)
    assert exact[0][0].tokens == [4] and early[0][0].tokens == []


def test_unfinished_hypotheses_are_finalised_at_max_len():
    table = np.zeros((6, V, V))
    table[:, :, 7] = 0.9  # EOS never the best option
    table[:, :, EOS] = 0.1
    model = Scripted(table)
    beams = search.beam_search(model, np.full((1, 2), 5), beam_size=2, nbest=2, max_len=3, alpha=0.0)
    best = beams[0][0]
    assert best.tokens == [7, 7, 7] and not best.ended and best.length == 3
    assert math.isclose(best.score, 3 * math.log(0.9))


def test_search_argument_errors(seq2seq, src):
    with pytest.raises(ValueError, match="beam_size"):
        search.beam_search(seq2seq, src, beam_size=0)
    with pytest.raises(ValueError, match="nbest"):
        search.beam_search(seq2seq, src, beam_size=2, nbest=3)
    with pytest.raises(ValueError, match="max_len"):
        search.greedy(seq2seq, src, max_len=0)
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        search.greedy(seq2seq, src[0])
    with pytest.raises(ValueError, match="outside the source vocabulary"):
        search.greedy(seq2seq, src + V)


def test_topk_sorted_breaks_ties_to_the_lower_index():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_array_equal(search._topk_sorted(scores, 2), [[1, 2], [0, 1]])
    rng = np.random.default_rng(0)
    many = rng.integers(0, 4, size=(50, 30)).astype(float)  # lots of ties
    np.testing.assert_array_equal(search._topk_sorted(many, 6), np.argsort(-many, axis=1, kind="stable")[:, :6])


@pytest.mark.parametrize("width", [64 * 12, 1000, 40000])
def test_topk_sorted_block_shortcut_equals_a_full_stable_sort(width):
    """Rows long enough for the block shortcut (and not a multiple of its block): ties, -inf, all -inf rows."""
    rng = np.random.default_rng(width)
    scores = np.round(rng.normal(0.0, 2.0, size=(7, width)), 1).astype(np.float32)  # many ties
    scores[1, : width // 2] = -np.inf
    scores[2] = -np.inf
    scores[3, -5:] = scores[3].max() + 1.0  # the best entries in the (padded) last block
    for k in (1, 10):
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(search._topk_sorted(scores, k), expected)


@pytest.mark.parametrize("vocab", [7, 64 * 5, 1000])
@pytest.mark.parametrize("shared", [False, True])
def test_beam_topk_equals_a_stable_sort_of_the_summed_scores(vocab, shared):
    """_beam_topk never forms the (n, K V) sums; its indices and scores are a full stable sort's of them, with ties
    (rounded scores), -inf beams, -inf tokens, and one row shared by every beam (the first step)."""
    rng = np.random.default_rng(vocab + shared)
    n, K = 6, 4
    beam_scores = np.round(rng.normal(-3.0, 1.0, size=(n, K)), 1).astype(np.float32)
    beam_scores[1, 1:] = -np.inf
    log_probs = np.round(rng.normal(-5.0, 2.0, size=(n, 1 if shared else K, vocab)), 1).astype(np.float32)
    log_probs[:, :, 0] = -np.inf  # a forbidden token
    log_probs[2, :, vocab // 2 :] = -np.inf
    sums = (beam_scores[:, :, None] + log_probs).reshape(n, K * vocab)
    for k in (1, 2 * K):
        expected = np.argsort(-sums, axis=1, kind="stable")[:, :k]
        top, scores = search._beam_topk(beam_scores, log_probs, k)
        np.testing.assert_array_equal(top, expected)
        np.testing.assert_array_equal(scores, np.take_along_axis(sums, expected, axis=1))


def test_beam_search_first_step_runs_one_row_per_sentence(seq2seq):
    """The K beams of a sentence start as one state: the first decoder step sees B rows, the next ones B K."""
    src = np.array([[5, 6, 7, 2], [8, 9, 2, 0]])
    seen = []
    original = seq2seq.decode_step

    def spy(tokens, state):
        seen.append(len(tokens))
        return original(tokens, state)

    seq2seq.decode_step = spy
    try:
        search.beam_search(seq2seq, src, beam_size=3, max_len=4)
    finally:
        del seq2seq.decode_step
    assert seen[0] == 2 and set(seen[1:]) <= {3, 6} and seen[1] == 6


# --------------------------------------------------------------------------------------------------- sampling
@pytest.fixture(scope="module")
def lm():
    cfg = LMConfig(vocab_size=V, d_model=16, n_heads=2, n_layers=2, block_size=24, dtype="float64", seed=3)
    model = _randomise(LanguageModel(cfg), seed=3, scale=0.5)
    model.eval()
    return model


def test_sampling_is_reproducible_and_the_seed_matters(lm):
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    a = search.sample(lm, prompt, 12, seed=7)
    b = search.sample(lm, prompt, 12, rng=np.random.default_rng(7))
    c = search.sample(lm, prompt, 12, seed=8)
    assert a.shape == (2, 12) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(temperature=1.3, top_k=8, top_p=0.9)]
)
def test_sampling_same_with_and_without_cache(lm, kwargs):
    prompt = np.array([[1, 2, 3], [7, 8, 9]])
    with_cache = search.sample(lm, prompt, 15, seed=11, **kwargs)
    without = search.sample(lm, prompt, 15, seed=11, use_cache=False, **kwargs)
    np.testing.assert_array_equal(with_cache, without)


def test_greedy_limits_of_sampling_agree(lm):
    prompt = np.array([[1, 2, 3], [7, 8, 9]])
    by_k = search.sample(lm, prompt, 10, top_k=1, seed=1)
    by_t = search.sample(lm, prompt, 10, temperature=0, seed=2)
    by_p = search.sample(lm, prompt, 10, top_p=1e-9, seed=3)  # nucleus of one token
    np.testing.assert_array_equal(by_k, by_t)
    np.testing.assert_array_equal(by_k, by_p)
    # ... and equal to argmax over the full prefix recomputed by forward.
    ids = prompt.copy()
    for _ in range(10):
        ids = np.concatenate([ids, lm.forward(ids).data[:, -1].argmax(1)[:, None]], axis=1)
    np.testing.assert_array_equal(by_k, ids[:, 3:])


def test_one_dimensional_prompt(lm):
    out = search.sample(lm, np.array([1, 2]), 4, seed=0)
    assert out.shape == (4,)
    np.testing.assert_array_equal(out, search.sample(lm, np.array([[1, 2]]), 4, seed=0)[0])


def test_filter_logits_top_k_and_nucleus():
    probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    logits = np.log(probs)
    np.testing.assert_allclose(search.filter_logits(logits), probs)
    np.testing.assert_allclose(search.filter_logits(logits, top_p=0.79), [[0.625, 0.375, 0, 0]])  # 0.5+0.3 >= 0.79
    np.testing.assert_allclose(search.filter_logits(logits, top_p=0.81), [[0.5, 0.3, 0.15, 0]] / np.float64(0.95))
    np.testing.assert_allclose(search.filter_logits(logits, top_p=0.3), [[1, 0, 0, 0]])
    np.testing.assert_allclose(search.filter_logits(logits, top_k=3), [[0.5, 0.3, 0.15, 0]] / np.float64(0.95))
    hot = search.filter_logits(logits, temperature=0.5)
    np.testing.assert_allclose(hot, probs**2 / (probs**2).sum())


class ConstantLM:
    """An LM whose next-token distribution is always the same: the sampled frequencies must match it."""

    def __init__(self, probs):
        self.logits = np.log(np.asarray(probs))
        self.config = SimpleNamespace(block_size=None)

    def start_decoding(self, batch_size):
        return None

    def decode_step(self, tokens, state):
        return ng.tensor(np.tile(self.logits, (len(tokens), 1)))

    def forward(self, ids):
        return ng.tensor(np.tile(self.logits, ids.shape + (1,)))


def test_sampled_frequencies_match_the_filtered_distribution():
    probs = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    model, n = ConstantLM(probs), 4000
    for kwargs, expected in [
        (dict(), probs),
        (dict(top_k=2), probs[:2] / probs[:2].sum()),
        (dict(top_p=0.6), np.array([0.4, 0.25, 0, 0, 0]) / 0.65),
    ]:
        tokens = search.sample(model, np.zeros((n, 1), np.int64), 1, seed=0, **kwargs)[:, 0]
        freq = np.bincount(tokens, minlength=len(probs)) / n
        expected = np.pad(expected, (0, len(probs) - len(expected)))
        assert np.all(freq[expected == 0] == 0)
        assert np.all(np.abs(freq - expected) <= 5 * np.sqrt(expected * (1 - expected) / n) + 1e-12), (kwargs, freq)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=1.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=1, rng=np.random.default_rng(1)), "either rng or seed"),
    ],
)
def test_sampling_argument_errors(lm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        search.sample(lm, np.array([[1, 2]]), 3, **kwargs)


def test_sampling_refuses_more_than_block_size(lm):
    with pytest.raises(ValueError, match="block_size 24"):
        search.sample(lm, np.ones((1, 20), np.int64), 6, seed=0)
    assert search.sample(lm, np.ones((1, 20), np.int64), 5, seed=0).shape == (1, 5)  # 20 + 4 fed = 24


class Spy(EOSBiased):
    """Records, at each decode step, whether a graph would be recorded and whether dropout is on."""

    def decode_step(self, tokens, state):
        self.seen.append((ng.is_grad_enabled(), self.model.training))
        return super().decode_step(tokens, state)


def test_decoding_runs_in_eval_mode_without_graph_and_restores_the_mode(seq2seq, src):
    spy = Spy(seq2seq.model)
    spy.seen = []
    spy.model.train()
    try:
        search.beam_search(spy, src, beam_size=2, max_len=4)
        assert spy.seen and all(not grad and not training for grad, training in spy.seen)
        assert spy.model.training and ng.is_grad_enabled()
    finally:
        spy.model.eval()
