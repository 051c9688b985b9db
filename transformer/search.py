"""Decoding: greedy search, beam search (encoder-decoder) and sampling (language model).

Every decoder here works incrementally with the model's key/value cache (``model.start_decoding`` then one
``model.decode_step`` per token, ``DecoderState.reorder`` to follow beams and to drop finished sentences), runs under
``ng.no_grad()``, and is vectorised over the batch: one model call per step for all live rows, no Python loop over
sentences inside a step. Each function takes ``use_cache=False`` to recompute the whole prefix with ``model.forward``
at every step instead; the two paths feed the same numbers through the same search code, so they return the same
tokens and (in float64) the same scores to rounding.

Legend for shape comments: B sentences, K beam size, S source length, T tokens so far, V vocabulary, N live rows.

Conventions shared by greedy and beam search
--------------------------------------------
- Output token lists hold the generated tokens only: no BOS, no EOS.
- Scores are sums of natural-log probabilities of every generated token, *including the EOS* when one was emitted.
- Length: the number of generated tokens including the EOS (fairseq's convention); a hypothesis cut at the length limit
  has no EOS and its length is the number of its tokens.
- Length limit per sentence: ``min(max_len, floor(max_len_a * src_len + max_len_b))`` when ``max_len_b`` is given
  (src_len = non-padding source tokens), else ``max_len``; also capped at ``model.config.max_len`` (the decoder cannot
  feed more positions than that) and at least 1. When a sentence reaches its limit without an EOS its hypotheses are
  finalised as they are.
- PAD and BOS are never generated (their log-probability is set to -inf before the choice and the scores; the rest
  is not renormalised).
- The model is put in eval mode (no dropout) for the call and restored afterwards.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

import npgrad as ng
from npgrad import functional as F

if TYPE_CHECKING:
    from .model import LanguageModel, Transformer


# ----------------------------------------------------------------------------------------------------- small helpers
def _array(x):
    """The ndarray behind a Tensor (or the array itself)."""
    return x.data if isinstance(x, ng.Tensor) else np.asarray(x)


def _log_softmax(logits, step):
    """Row-wise log-softmax of (N, V) logits in their own dtype; NaN logits are a model bug, said so clearly."""
    if np.isnan(logits).any():
        raise FloatingPointError(f"the model produced NaN logits at decoding step {step}")
    # npgrad's own log-softmax primitive (its Numba kernel: one fused pass per row, about twice as fast as four NumPy
    # passes over (N, V): a tenth of a beam step is here).
    with ng.no_grad():
        return F.log_softmax(ng.tensor(logits), axis=-1).data


def _forbid(log_probs, config):
    """PAD and BOS are never generated: their log-probs become -inf (in place), so they are never fed back."""
    for name in ("pad_id", "bos_id"):
        token = getattr(config, name, None)
        if token is not None:
            log_probs[:, token] = -np.inf
    return log_probs


class _eval_mode:
    """Decode with dropout off: put the model in eval mode for the call, then restore its previous mode."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = getattr(self.model, "training", False)
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc):
        if self.was_training:
            self.model.train(True)
        return False


def _reorder(state, index):
    """``DecoderState.reorder`` may work in place or return the new state; accept both."""
    new_state = state.reorder(np.asarray(index, dtype=np.int64))
    return state if new_state is None else new_state


def _topk_sorted(scores, k, block=64):
    """Indices (N, k) of the k largest entries of each row of ``scores`` (N, M), best first, ties to the lower index.

    Beam search calls it on (sentences, K V) every step, where a full argpartition costs more than the decoder's
    attention. Exact shortcut: cut each row into blocks of ``block`` entries and take t = the k-th largest block
    maximum. The k blocks with a maximum >= t hold k entries >= t, so the k-th largest entry is >= t, and every entry
    that can be in the top k (ties at the k-th value included) is >= t and lies in a block whose maximum is >= t.
    Only those few blocks are searched and sorted (value descending, then index ascending): the same order as a full
    stable sort, which short rows use.
    """
    n_rows, m = scores.shape
    n_blocks = -(-m // block)
    if n_blocks <= k:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    if n_blocks * block != m:  # pad with -inf: never above a real entry
        padded = np.full((n_rows, n_blocks * block), -np.inf, dtype=scores.dtype)
        padded[:, :m] = scores
    else:
        padded = scores
    blocks = padded.reshape(n_rows, n_blocks, block)  # (N, nb, block)
    block_max = blocks.max(axis=2)  # (N, nb)
    threshold = np.partition(block_max, n_blocks - k, axis=1)[:, n_blocks - k]  # k-th largest block maximum (N,)
    block_rows, block_cols = np.nonzero(block_max >= threshold[:, None])  # the blocks that can hold a top-k entry
    values = blocks[block_rows, block_cols]  # (P, block)
    pick, offset = np.nonzero(values >= threshold[block_rows, None])
    rows, cols, picked = block_rows[pick], block_cols[pick] * block + offset, values[pick, offset]
    order = np.lexsort((cols, -picked, rows))  # by row, then value descending, then index ascending
    counts = np.bincount(rows, minlength=n_rows)  # >= k candidates per row (see above)
    return cols[order][(np.cumsum(counts) - counts)[:, None] + np.arange(k)]


def _beam_topk(beam_scores, log_probs, k, block=64):
    """The k best extensions of every sentence's beams: (indices (n, k) into K V, scores (n, k)), best first.

    Extension (b, v) of sentence i scores ``beam_scores[i, b] + log_probs[i, b, v]``; beam_scores (n, K), log_probs
    (n, K, V) or (n, 1, V) (one row shared by the K beams: the first step). The same indices and scores, in the same
    order (ties to the lower index b V + v), as ``_topk_sorted`` on the (n, K V) matrix of those sums, without writing
    that matrix: rounding is monotone, so fl(s + max(block)) is the largest fl(s + x) of a block, and the block maxima
    of the log-probs with the beam's score added are the block maxima of the sums. Only the blocks that can hold a top
    entry (see ``_topk_sorted``) have their sums formed.
    """
    n, n_beams = beam_scores.shape
    shared = log_probs.shape[1]  # K, or 1 when every beam reads the same row
    vocab = log_probs.shape[2]
    n_blocks = -(-vocab // block)
    if n_beams * n_blocks <= k:  # short rows: the plain way
        candidates = (beam_scores[:, :, None] + log_probs).reshape(n, n_beams * vocab)
        top = _topk_sorted(candidates, k)
        return top, np.take_along_axis(candidates, top, axis=1)
    if n_blocks * block != vocab:  # pad with -inf: never above a real entry
        padded = np.full(log_probs.shape[:2] + (n_blocks * block,), -np.inf, dtype=log_probs.dtype)
        padded[:, :, :vocab] = log_probs
        log_probs = padded
    blocks = log_probs.reshape(n, shared, n_blocks, block)  # (n, K or 1, nb, block)
    block_max = beam_scores[:, :, None] + blocks.max(axis=3)  # (n, K, nb): the block maxima of the sums
    flat_max = block_max.reshape(n, n_beams * n_blocks)
    threshold = np.partition(flat_max, flat_max.shape[1] - k, axis=1)[:, flat_max.shape[1] - k]  # (n,)
    rows, beams, cols = np.nonzero(block_max >= threshold[:, None, None])  # the blocks that can hold a top entry
    values = beam_scores[rows, beams][:, None] + blocks[rows, beams if shared > 1 else 0, cols]  # (P, block)
    pick, offset = np.nonzero(values >= threshold[rows, None])
    rows, picked = rows[pick], values[pick, offset]
    index = beams[pick] * vocab + cols[pick] * block + offset  # b V + v
    order = np.lexsort((index, -picked, rows))  # by sentence, then score descending, then index ascending
    counts = np.bincount(rows, minlength=n)  # >= k per sentence
    chosen = order[(np.cumsum(counts) - counts)[:, None] + np.arange(k)]  # (n, k)
    return index[chosen], picked[chosen]


def block_repeated_ngrams(log_probs: np.ndarray, prefixes: np.ndarray, n: int) -> np.ndarray:
    """``no_repeat_ngram_size`` (fairseq, Hugging Face): a token that would complete an n-gram already in its row's
    output gets log-prob -inf (in place), so no output holds an n-gram twice. ``log_probs`` (N, V), ``prefixes``
    (N, T) the tokens generated so far (no BOS); ``n`` <= 0 blocks nothing.

    Row r may not take token ``prefixes[r, j + n - 1]`` when ``prefixes[r, j : j + n - 1]`` equals its last n - 1
    tokens, for every j in 0 .. T - n (for n = 1: no token of the prefix at all)."""
    N, T = prefixes.shape
    if n <= 0 or T < n:
        return log_probs
    if n == 1:
        log_probs[np.arange(N)[:, None], prefixes] = -np.inf
        return log_probs
    windows = np.lib.stride_tricks.sliding_window_view(prefixes, n - 1, axis=1)[:, : T - n + 1]  # (N, T-n+1, n-1)
    match = (windows == prefixes[:, None, T - n + 1 :]).all(axis=2)  # (N, T-n+1): start j repeats the tail
    rows, starts = np.nonzero(match)
    log_probs[rows, prefixes[rows, starts + n - 1]] = -np.inf
    return log_probs


def length_penalty(length: int | np.ndarray, alpha: float) -> float | np.ndarray:
    """GNMT length penalty ``((5 + length) / 6) ** alpha`` (Wu et al. 2016); a score is divided by it."""
    return ((5.0 + np.asarray(length, dtype=np.float64)) / 6.0) ** alpha


def _check_src(model, src):
    src = _array(src)
    if src.ndim != 2:
        raise ValueError(f"src must be a (B, S) array of token ids, got shape {src.shape}")
    if src.dtype.kind not in "iu":
        raise TypeError(f"src must hold integer token ids, got dtype {src.dtype}")
    if src.shape[0] == 0 or src.shape[1] == 0:
        raise ValueError(f"src must hold at least one sentence of at least one token, got shape {src.shape}")
    vocab = getattr(model.config, "src_vocab_size", None)
    if vocab is not None and (src.min() < 0 or src.max() >= vocab):
        bad = src[(src < 0) | (src >= vocab)][0]
        raise ValueError(f"src holds token id {bad}, outside the source vocabulary [0, {vocab})")
    return src.astype(np.int64, copy=False)


def _length_limits(model, src, max_len, max_len_a, max_len_b):
    """Per-sentence limit on the generated length (B,) int64; see the module docstring."""
    if not isinstance(max_len, numbers.Integral) or max_len < 1:
        raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
    config = model.config
    limits = np.full(src.shape[0], int(max_len), dtype=np.int64)
    if max_len_b is not None:
        src_len = (src != getattr(config, "pad_id", 0)).sum(axis=1)
        limits = np.minimum(limits, np.floor(max_len_a * src_len + max_len_b).astype(np.int64))
    elif max_len_a:
        raise ValueError("max_len_a needs max_len_b (the rule is max_len_a * src_len + max_len_b)")
    position_cap = getattr(config, "max_len", None)
    if position_cap is not None:
        limits = np.minimum(limits, int(position_cap))
    return np.maximum(limits, 1)


# ----------------------------------------------------------------------------------------------------- steppers
# A stepper hides whether the prefix is cached: step(tokens (N,)) feeds one token per row and returns logits (N, V);
# reorder(index) keeps/reorders/repeats rows. The search code is the same for both.
class _CachedSeq2Seq:
    def __init__(self, model, src):
        self.model = model
        memory, src_pad = model.encode(src)
        self.state = model.start_decoding(memory, src_pad)

    def step(self, tokens):
        return _array(self.model.decode_step(tokens, self.state))

    def reorder(self, index):
        self.state = _reorder(self.state, index)


class _FullPrefixSeq2Seq:
    """No cache: every step runs ``model.forward(src, BOS + prefix)`` and keeps the last position."""

    def __init__(self, model, src):
        self.model = model
        self.src = src  # (N, S)
        self.prefix = np.zeros((src.shape[0], 0), dtype=np.int64)  # (N, T)

    def step(self, tokens):
        self.prefix = np.concatenate([self.prefix, tokens[:, None]], axis=1)
        return _array(self.model.forward(self.src, self.prefix))[:, -1]

    def reorder(self, index):
        self.src, self.prefix = self.src[index], self.prefix[index]


class _CachedLM:
    def __init__(self, model, batch_size):
        self.model = model
        self.state = model.start_decoding(batch_size)

    def prefill(self, prompt):
        if hasattr(self.model, "prefill"):
            return _array(self.model.prefill(prompt, self.state))
        for t in range(prompt.shape[1]):
            logits = self.step(prompt[:, t])
        return logits

    def step(self, tokens):
        return _array(self.model.decode_step(tokens, self.state))


class _FullPrefixLM:
    def __init__(self, model, batch_size):
        self.model = model
        self.ids = np.zeros((batch_size, 0), dtype=np.int64)

    def prefill(self, prompt):
        self.ids = prompt
        return _array(self.model.forward(self.ids))[:, -1]

    def step(self, tokens):
        self.ids = np.concatenate([self.ids, tokens[:, None]], axis=1)
        return _array(self.model.forward(self.ids))[:, -1]


def _seq2seq_stepper(model, src, use_cache):
    return _CachedSeq2Seq(model, src) if use_cache else _FullPrefixSeq2Seq(model, src)


# ----------------------------------------------------------------------------------------------------- greedy
class GreedyOutput(NamedTuple):
    tokens: list  # B lists of generated token ids, without BOS/EOS
    scores: np.ndarray  # (B,) sum of log-probs of the generated tokens, EOS included when emitted
    ended: np.ndarray  # (B,) bool: True = the sentence ended with EOS, False = cut at its length limit


def greedy(
    model: Transformer,
    src: np.ndarray,
    max_len: int = 200,
    max_len_a: float = 0.0,
    max_len_b: int | None = None,
    use_cache: bool = True,
    rng: np.random.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    no_repeat_ngram_size: int = 0,
) -> GreedyOutput:
    """Greedy decoding of a batch of source sentences with an encoder-decoder ``model``.

    At every step each live sentence takes its most probable token (ties to the lowest id); a sentence stops when it
    emits EOS or reaches its length limit (module docstring), finished sentences leave the batch (``reorder``), and
    the loop ends when none is left. Returns ``GreedyOutput(tokens, scores, ended)``.

    With ``rng`` (a ``np.random.Generator``) each token is *sampled* instead, from the distribution ``filter_logits``
    makes (``temperature``, ``top_k``, ``top_p``): sampled translations, e.g. for back-translation (Edunov et al.
    2018), or sampled responses; one uniform draw per live row per step, so the generator's state reproduces the
    output. ``no_repeat_ngram_size`` blocks repeats (``block_repeated_ngrams``) before the choice.
    """
    if rng is not None:
        _check_sampling_args(temperature, top_k, top_p, 0)
    src = _check_src(model, src)
    limits = _length_limits(model, src, max_len, max_len_a, max_len_b)
    config = model.config
    bos_id, eos_id = config.bos_id, config.eos_id
    n_sentences = src.shape[0]
    out_tokens = np.zeros((n_sentences, int(limits.max())), dtype=np.int64)  # (B, L)
    out_lengths = np.zeros(n_sentences, dtype=np.int64)
    ended = np.zeros(n_sentences, dtype=bool)
    scores = None
    with ng.no_grad(), _eval_mode(model):
        stepper = _seq2seq_stepper(model, src, use_cache)
        active = np.arange(n_sentences)  # sentence id of each live row (N,)
        tokens = np.full(n_sentences, bos_id, dtype=np.int64)  # (N,) fed at this step
        for t in range(int(limits.max())):
            log_probs = _forbid(_log_softmax(stepper.step(tokens), t), config)  # (N, V)
            block_repeated_ngrams(log_probs, out_tokens[active, :t], no_repeat_ngram_size)
            if scores is None:
                scores = np.zeros(n_sentences, dtype=log_probs.dtype)
            choice = (
                log_probs.argmax(axis=1) if rng is None else _draw(log_probs, temperature, top_k, top_p, rng)
            )  # (N,)
            scores[active] += log_probs[np.arange(len(active)), choice]
            is_eos = choice == eos_id
            out_tokens[active, t] = choice
            out_lengths[active[~is_eos]] = t + 1
            ended[active[is_eos]] = True
            finished = is_eos | (limits[active] <= t + 1)
            if finished.all():
                break
            if finished.any():
                keep = np.flatnonzero(~finished)
                stepper.reorder(keep)
                active, choice = active[keep], choice[keep]
            tokens = choice
    token_lists = [out_tokens[i, : out_lengths[i]].tolist() for i in range(n_sentences)]
    return GreedyOutput(token_lists, scores if scores is not None else np.zeros(n_sentences), ended)


# ----------------------------------------------------------------------------------------------------- beam search
class Hypothesis(NamedTuple):
    tokens: list  # generated token ids, without BOS/EOS
    score: float  # sum of log-probs of the generated tokens (EOS included when emitted)
    normalized_score: float  # score / ((5 + length) / 6) ** alpha
    length: int  # generated tokens counted by the penalty: len(tokens) + (1 if ended else 0)
    ended: bool  # True = finished with EOS, False = finalised at the length limit


def beam_search(
    model: Transformer,
    src: np.ndarray,
    beam_size: int = 4,
    max_len: int = 200,
    alpha: float = 0.6,
    nbest: int = 1,
    max_len_a: float = 0.0,
    max_len_b: int | None = None,
    early_stopping: bool = False,
    use_cache: bool = True,
    no_repeat_ngram_size: int = 0,
) -> list[list[Hypothesis]]:
    """Batched beam search with the GNMT length penalty; returns, per sentence, its ``nbest`` best hypotheses.

    The B sentences are decoded together as B*K rows of the decoder state: the first step runs on B rows (a sentence's
    K beams start from one state), then ``reorder`` repeats each sentence's cache K times, follows the surviving beams
    and drops finished sentences at every step.

    Each step, for every sentence: the K live hypotheses are extended by every token and the 2K best extensions by
    summed log-prob are kept, ordered best first (ties to the lower beam, then the lower token id).

    - **Finishing.** An extension by EOS that ranks among the best K is finished: it moves to the sentence's finished
      list, scored ``score / ((5 + length) / 6) ** alpha`` with length = generated tokens including the EOS. EOS
      extensions ranked below K are dropped (fairseq). The best K extensions that are not EOS stay live (there are
      always K: each live beam contributes at most one EOS extension).
    - **Stopping.** A sentence stops when it has at least ``beam_size`` finished hypotheses and no live one can still
      beat the ``nbest``-th best finished one: log-probs are <= 0, so a live hypothesis with summed score s can reach at
      most ``s / max(lp(length + 1), lp(limit))`` (the penalty is monotone in the length). With
      ``early_stopping=True`` it stops as soon as it has ``beam_size`` finished hypotheses (cheaper, may miss a longer
      hypothesis that the penalty would favour).
    - **Length limit.** At its length limit (module docstring) a sentence's live hypotheses are finalised as they are
      (no EOS; length = their number of tokens) and compete with the finished ones.
    - **Output.** A list of B lists of ``Hypothesis(tokens, score, normalized_score, length, ended)``, at most
      ``nbest`` each, sorted by ``normalized_score`` best first (ties: the one finished earlier first).

    ``beam_size=1`` gives greedy's output when ``alpha=0`` or ``early_stopping=True``. ``no_repeat_ngram_size`` n > 0:
    no hypothesis holds an n-gram twice (``block_repeated_ngrams`` on every live beam before the choice).
    """
    if not isinstance(beam_size, numbers.Integral) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}")
    if not isinstance(nbest, numbers.Integral) or not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be an integer in [1, beam_size={beam_size}], got {nbest!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha (length penalty exponent) must be finite, got {alpha!r}")
    src = _check_src(model, src)
    limits = _length_limits(model, src, max_len, max_len_a, max_len_b)  # (B,)
    config = model.config
    bos_id, eos_id = config.bos_id, config.eos_id
    K = int(beam_size)
    n_sentences = src.shape[0]
    max_limit = int(limits.max())

    # Finished lists, indexed by sentence id; -inf marks an empty slot. Kept sorted best first, at most K each.
    fin_norm = np.full((n_sentences, K), -np.inf)  # (B, K)
    fin_score = np.full((n_sentences, K), -np.inf)
    fin_length = np.zeros((n_sentences, K), dtype=np.int64)
    fin_ended = np.zeros((n_sentences, K), dtype=bool)
    fin_tokens = np.zeros((n_sentences, K, max_limit), dtype=np.int64)  # (B, K, L), EOS/garbage past length

    with ng.no_grad(), _eval_mode(model):
        # The first step runs one row per sentence (its K beams would be K copies of BOS, the same state) and the
        # rows are repeated K times after it: the step CTranslate2 and fairseq also save.
        stepper = _seq2seq_stepper(model, src, use_cache)
        active = np.arange(n_sentences)  # live sentence ids (n,)
        beam_tokens = np.zeros((n_sentences, K, 0), dtype=np.int64)  # (n, K, T) live prefixes
        beam_scores = None  # (n, K)
        tokens = np.full(n_sentences, bos_id, dtype=np.int64)  # (n*K,) fed at this step; (n,) at the first
        for t in range(max_limit):
            n = len(active)
            log_probs = _forbid(_log_softmax(stepper.step(tokens), t), config)  # (n*K, V); (n, V) at the first step
            dtype, vocab = log_probs.dtype, log_probs.shape[1]
            if beam_scores is None:
                # Only beam 0 is real at the start: beams 1..K-1 score -inf, as if they were the K copies of BOS.
                beam_scores = np.full((n, K), -np.inf, dtype=dtype)
                beam_scores[:, 0] = 0
                fin_norm, fin_score = fin_norm.astype(dtype), fin_score.astype(dtype)
            else:
                block_repeated_ngrams(log_probs, beam_tokens.reshape(n * K, t), no_repeat_ngram_size)
            top, top_scores = _beam_topk(beam_scores, log_probs.reshape(n, -1, vocab), 2 * K)  # (n, 2K) best first
            top_beam, top_token = top // vocab, top % vocab
            new_length = t + 1
            penalty = length_penalty(new_length, alpha).astype(dtype)

            # Every candidate's full token sequence (n, 2K, L); position t holds the new token (EOS included).
            seqs = np.zeros((n, 2 * K, max_limit), dtype=np.int64)
            seqs[:, :, :t] = beam_tokens[np.arange(n)[:, None], top_beam]
            seqs[:, :, t] = top_token

            is_eos = top_token == eos_id
            finishing = is_eos & (np.arange(2 * K) < K) & np.isfinite(top_scores)
            live = np.argsort(is_eos, axis=1, kind="stable")[:, :K]  # (n, K) first K non-EOS, in rank order
            live_scores = np.take_along_axis(top_scores, live, axis=1)
            live_beam = np.take_along_axis(top_beam, live, axis=1)
            live_token = np.take_along_axis(top_token, live, axis=1)
            live_seqs = np.take_along_axis(seqs, live[:, :, None], axis=1)  # (n, K, L)
            at_limit = limits[active] <= new_length  # (n,)
            cut = at_limit[:, None] & np.isfinite(live_scores)  # finalised without EOS

            if finishing.any() or cut.any():
                # Merge old finished (K) + new EOS hypotheses (2K) + cut live ones (K); keep the best K.
                pool_norm = np.concatenate(
                    [
                        fin_norm[active],
                        np.where(finishing, top_scores / penalty, -np.inf).astype(dtype),
                        np.where(cut, live_scores / penalty, -np.inf).astype(dtype),
                    ],
                    axis=1,
                )
                pool_score = np.concatenate([fin_score[active], top_scores, live_scores], axis=1)
                pool_length = np.concatenate([fin_length[active], np.full((n, 3 * K), new_length)], axis=1)
                pool_ended = np.concatenate(
                    [fin_ended[active], np.ones((n, 2 * K), bool), np.zeros((n, K), bool)], axis=1
                )
                pool_tokens = np.concatenate([fin_tokens[active], seqs, live_seqs], axis=1)  # (n, 4K, L)
                best = np.argsort(-pool_norm, axis=1, kind="stable")[:, :K]  # (n, K)
                fin_norm[active] = np.take_along_axis(pool_norm, best, axis=1)
                fin_score[active] = np.take_along_axis(pool_score, best, axis=1)
                fin_length[active] = np.take_along_axis(pool_length, best, axis=1)
                fin_ended[active] = np.take_along_axis(pool_ended, best, axis=1)
                fin_tokens[active] = np.take_along_axis(pool_tokens, best[:, :, None], axis=1)

            beam_scores, beam_tokens = live_scores, live_seqs[:, :, :new_length]
            n_finished = np.isfinite(fin_norm[active]).sum(axis=1)
            if early_stopping:
                done = n_finished >= K
            else:
                best_penalty = np.maximum(
                    length_penalty(new_length + 1, alpha), length_penalty(limits[active], alpha)
                ).astype(dtype)
                live_bound = beam_scores[:, 0] / best_penalty  # best reachable normalised score
                done = (n_finished >= K) & (live_bound <= fin_norm[active, nbest - 1])
            done |= at_limit
            if done.all():
                break
            keep = np.flatnonzero(~done)
            # Rows of the next step: for each kept sentence its K live beams, taken from the rows they extend (after
            # the first step, every beam extends the sentence's one row).
            if t == 0:
                stepper.reorder(np.repeat(keep, K))
            else:
                stepper.reorder((keep[:, None] * K + live_beam[keep]).reshape(-1))
            active, beam_scores, beam_tokens = active[keep], beam_scores[keep], beam_tokens[keep]
            tokens = live_token[keep].reshape(-1)

    results = []
    for i in range(n_sentences):  # output assembly, once, not per step
        hyps = []
        for j in range(nbest):
            if not np.isfinite(fin_norm[i, j]):
                break
            n_tokens = int(fin_length[i, j]) - int(fin_ended[i, j])
            hyps.append(
                Hypothesis(
                    fin_tokens[i, j, :n_tokens].tolist(),
                    float(fin_score[i, j]),
                    float(fin_norm[i, j]),
                    int(fin_length[i, j]),
                    bool(fin_ended[i, j]),
                )
            )
        results.append(hyps)
    return results


# ----------------------------------------------------------------------------------------------------- sampling
def _check_sampling_args(temperature, top_k, top_p, max_new_tokens):
    if not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, numbers.Real)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def filter_logits(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """Sampling distribution (N, V) float64 from logits (N, V): temperature, then top-k, then top-p (nucleus).

    - temperature: logits / temperature (> 0; 0 is handled by the caller as argmax).
    - top-k: tokens below the k-th largest logit get probability 0 (ties with the k-th are kept, as PyTorch/nanoGPT).
    - top-p: keep the smallest set of most probable tokens whose cumulative probability is >= p (the most probable
      token is always kept); the rest get probability 0. Renormalised.
    The arithmetic is float64 whatever the model's dtype: a cumulative sum over a large vocabulary drifts in float32.
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature  # (N, V)
    vocab = scaled.shape[1]
    if top_k is not None and top_k < vocab:
        kth = np.partition(scaled, vocab - top_k, axis=1)[:, vocab - top_k]  # (N,) k-th largest
        scaled = np.where(scaled < kth[:, None], -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")  # (N, V) most probable first
        sorted_probs = np.take_along_axis(probs, order, axis=1)
        mass_before = np.cumsum(sorted_probs, axis=1) - sorted_probs  # mass of the strictly better tokens
        drop_sorted = mass_before >= top_p  # already reached p without this one
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def _draw(logits, temperature, top_k, top_p, rng):
    """One token per row (N,) drawn from ``filter_logits``'s distribution with one uniform draw per row."""
    cdf = np.cumsum(filter_logits(logits, temperature, top_k, top_p), axis=1)  # (N, V)
    u = 1.0 - rng.random(cdf.shape[0])  # in (0, 1]: never picks a 0-prob token
    return np.minimum((cdf < u[:, None] * cdf[:, -1:]).sum(axis=1), cdf.shape[1] - 1)


def sample(
    model: LanguageModel,
    prompt_ids: np.ndarray,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Sample ``max_new_tokens`` continuations of ``prompt_ids`` (B, P) (or (P,)) from a language model.

    Returns the new tokens only, (B, max_new_tokens) int64 (or (max_new_tokens,) for a 1-D prompt).
    ``temperature=0`` or ``top_k=1`` is greedy decoding (argmax, ties to the lowest id) and draws no random numbers.
    Randomness comes from ``rng`` (a ``np.random.Generator``) or a fresh ``np.random.default_rng(seed)``: one uniform
    draw per row per step, so a fixed seed reproduces the output, with or without the cache.
    The prompt and the generated tokens (but the last, never fed back) must fit the model's ``block_size``.
    """
    _check_sampling_args(temperature, top_k, top_p, max_new_tokens)
    if rng is not None and seed is not None:
        raise ValueError("give either rng or seed, not both")
    if rng is None:
        rng = np.random.default_rng(seed)
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    prompt = _array(prompt_ids)
    one_dimensional = prompt.ndim == 1
    if one_dimensional:
        prompt = prompt[None, :]
    if prompt.ndim != 2 or prompt.shape[1] == 0 or prompt.dtype.kind not in "iu":
        raise ValueError(
            f"prompt_ids must be a non-empty (B, P) or (P,) integer array, got shape "
            f"{_array(prompt_ids).shape} dtype {_array(prompt_ids).dtype}"
        )
    prompt = prompt.astype(np.int64, copy=False)
    block_size = getattr(model.config, "block_size", None)
    fed = prompt.shape[1] + max(int(max_new_tokens) - 1, 0)
    if block_size is not None and fed > block_size:
        raise ValueError(
            f"prompt length {prompt.shape[1]} + {max_new_tokens} new tokens needs {fed} positions, "
            f"more than the model's block_size {block_size}"
        )
    greedy_pick = temperature == 0 or top_k == 1
    n_rows = prompt.shape[0]
    out = np.zeros((n_rows, int(max_new_tokens)), dtype=np.int64)
    if max_new_tokens > 0:
        with ng.no_grad(), _eval_mode(model):
            stepper = _CachedLM(model, n_rows) if use_cache else _FullPrefixLM(model, n_rows)
            logits = stepper.prefill(prompt)  # (B, V)
            for t in range(int(max_new_tokens)):
                if np.isnan(logits).any():
                    raise FloatingPointError(f"the model produced NaN logits at sampling step {t}")
                tokens = logits.argmax(axis=1) if greedy_pick else _draw(logits, temperature, top_k, top_p, rng)
                out[:, t] = tokens
                if t + 1 < max_new_tokens:
                    logits = stepper.step(tokens.astype(np.int64))
    return out[0] if one_dimensional else out
