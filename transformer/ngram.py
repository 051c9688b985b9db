"""A count-based baseline: an interpolated Kneser-Ney n-gram language model on token ids.

The classic model the Transformer LM is measured against (Chen & Goodman 1999, interpolated
Kneser-Ney with one absolute discount per order). For a context h = (w_{t-n+1}, ..., w_{t-1}):

    P_n(w | h) = max(c(h w) - D_n, 0) / c(h)  +  D_n * N1+(h .) / c(h) * P_{n-1}(w | h')

where h' drops the oldest token. Orders below the highest use *continuation* counts
N1+(. h' w) (the number of distinct tokens seen before h' w) instead of raw counts, which is
what makes Kneser-Ney better than plain interpolation. The recursion ends in

    P_1(w) = max(N1+(. w) - D_1, 0) / N1+(. .)  +  D_1 * |{w : N1+(. w) > 0}| / N1+(. .) * 1/V

so every one of the V tokens gets probability > 0 and, for every context, sum_w P(w | h) = 1
exactly (up to round-off). A context never seen (c(h) = 0) backs off wholly to the lower order.
Discounts: D = n1 / (n1 + 2 n2) from the counts-of-counts of each order (Ney et al. 1994).

N-grams are packed into one int64 per n-gram (base V digits), counted with np.unique and looked
up with np.searchsorted, so training and scoring are vectorised.
"""

from __future__ import annotations

import math

import numpy as np


class KneserNeyLM:
    def __init__(self, order: int, vocab_size: int):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if vocab_size < 2:
            raise ValueError(f"vocabulary size must be >= 2, got {vocab_size}")
        if order * math.log2(vocab_size + 1) > 62:
            raise ValueError(
                f"order {order} with a vocabulary of {vocab_size} does not fit the int64 n-gram packing "
                f"(needs V^order < 2^62); use order <= {int(62 // math.log2(vocab_size + 1))}"
            )
        self.order = order
        self.V = vocab_size
        self.tables = None

    # ------------------------------------------------------------------ packing
    def _pack(self, windows):
        """(M, k) ids -> (M,) int64, each row read as base-(V+1) digits (0 means 'no token')."""
        base = np.int64(self.V + 1)
        code = np.zeros(windows.shape[0], dtype=np.int64)
        for j in range(windows.shape[1]):
            code = code * base + (windows[:, j].astype(np.int64) + 1)
        return code

    @staticmethod
    def _lookup(keys, values, query, default=0):
        """values[keys == query] for sorted unique keys; default where absent."""
        if keys.size == 0:
            return np.full(query.shape, default, dtype=values.dtype)
        pos = np.searchsorted(keys, query)
        pos_c = np.minimum(pos, keys.size - 1)
        found = keys[pos_c] == query
        return np.where(found, values[pos_c], default)

    # ------------------------------------------------------------------ training
    def fit(self, ids):
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if ids.size < self.order:
            raise ValueError(f"need at least {self.order} tokens to fit an order-{self.order} model, got {ids.size}")
        if ids.min() < 0 or ids.max() >= self.V:
            bad = int(np.flatnonzero((ids < 0) | (ids >= self.V))[0])
            raise ValueError(f"token id {int(ids[bad])} at position {bad} is outside the vocabulary [0, {self.V})")
        tables = []
        for n in range(1, self.order + 1):
            windows = np.lib.stride_tricks.sliding_window_view(ids, n)  # (M, n)
            grams, counts = np.unique(self._pack(windows), return_counts=True)
            if n < self.order:
                # Continuation counts: distinct left neighbours of each n-gram, N1+(. g).
                ext = np.unique(self._pack(np.lib.stride_tricks.sliding_window_view(ids, n + 1)))
                grams, counts = np.unique(ext % np.int64((self.V + 1) ** n), return_counts=True)
            n1 = int(np.sum(counts == 1))
            n2 = int(np.sum(counts == 2))
            discount = n1 / (n1 + 2 * n2) if n1 + 2 * n2 > 0 else 0.5
            discount = min(max(discount, 0.05), 0.95)
            # Per-context totals and the number of distinct continuations N1+(h .).
            ctx = grams // np.int64(self.V + 1)
            ctx_keys, ctx_start, ctx_types = np.unique(ctx, return_index=True, return_counts=True)
            ctx_total = np.add.reduceat(counts, ctx_start) if counts.size else counts
            tables.append(
                dict(
                    grams=grams,
                    counts=counts.astype(np.float64),
                    D=discount,
                    ctx=ctx_keys,
                    ctx_total=ctx_total.astype(np.float64),
                    ctx_types=ctx_types.astype(np.float64),
                )
            )
        self.tables = tables
        return self

    # ------------------------------------------------------------------ scoring
    def _prob(self, history, w):
        """P(w | history) for rows of history (M, order-1) (-1 = no token) and candidates w (M,)."""
        uni = self.tables[0]
        grams1 = self._pack(w[:, None])
        c1 = self._lookup(uni["grams"], uni["counts"], grams1, 0.0)
        total1 = uni["counts"].sum()
        types1 = float(uni["counts"].size)
        p = (np.maximum(c1 - uni["D"], 0.0) + uni["D"] * types1 / self.V) / total1
        for n in range(2, self.order + 1):
            t = self.tables[n - 1]
            h = history[:, history.shape[1] - (n - 1) :]  # (M, n-1)
            valid = np.all(h >= 0, axis=1)
            hcode = self._pack(np.where(h >= 0, h, 0))
            total = self._lookup(t["ctx"], t["ctx_total"], hcode, 0.0)
            types = self._lookup(t["ctx"], t["ctx_types"], hcode, 0.0)
            gcode = hcode * np.int64(self.V + 1) + (w.astype(np.int64) + 1)
            c = self._lookup(t["grams"], t["counts"], gcode, 0.0)
            seen = valid & (total > 0)
            safe_total = np.where(seen, total, 1.0)
            interp = (np.maximum(c - t["D"], 0.0) + t["D"] * types * p) / safe_total
            p = np.where(seen, interp, p)
        return p

    def _histories(self, ids):
        k = self.order - 1
        padded = np.concatenate([np.full(k, -1, dtype=np.int64), ids])
        if k == 0:
            return np.zeros((ids.size, 0), dtype=np.int64)
        return np.lib.stride_tricks.sliding_window_view(padded, k)[: ids.size]

    def distribution(self, context):
        """P(. | context) over the whole vocabulary, shape (V,); sums to 1."""
        self._check_fitted()
        context = np.asarray(context, dtype=np.int64).ravel()
        k = self.order - 1
        hist = np.full(k, -1, dtype=np.int64)
        if k:
            tail = context[-k:]
            hist[k - tail.size :] = tail
        w = np.arange(self.V, dtype=np.int64)
        return self._prob(np.broadcast_to(hist, (self.V, k)), w)

    def token_log_probs(self, ids):
        """Natural-log probability of each token given the tokens before it."""
        self._check_fitted()
        ids = np.asarray(ids, dtype=np.int64).ravel()
        return np.log(self._prob(self._histories(ids), ids))

    def evaluate(self, ids):
        """Mean negative log-likelihood (nats/token) and perplexity on a token stream."""
        lp = self.token_log_probs(ids)
        loss = float(-lp.mean())
        return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(lp.size)}

    def _check_fitted(self):
        if self.tables is None:
            raise RuntimeError("KneserNeyLM: call fit(ids) before scoring")
