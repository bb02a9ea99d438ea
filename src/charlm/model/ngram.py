"""A character n-gram model with interpolated Kneser-Ney smoothing, vectorised with numpy.

The baseline of Karpathy, Johnson & Fei-Fei (2015), whose 20-gram reached 1.195 nats/char on
War and Peace's test split. Neither library we measured fits this size (see BENCHMARKS.md,
"n-gram baseline"): KenLM's Python package only queries models (its estimator ``lmplz`` is a
separate C++ program) and is compiled for orders up to 6; ``nltk.lm.KneserNeyInterpolated``
took 26 s and 1.4 GB to fit 100,000 characters at order 20 and scored 19 characters/s.

The smoothing is interpolated Kneser-Ney as given by Chen & Goodman (1998, "An Empirical Study
of Smoothing Techniques for Language Modeling", TR-10-98, Harvard; sections "Kneser-Ney
smoothing" and "Modified Kneser-Ney smoothing", both interpolated). For a context ``h`` of
``k - 1`` characters and its shortening ``h'`` (first character dropped)::

    p_k(w | h) = (max(c_k(h w) - D_k(c_k(h w)), 0) + gamma_k(h) * p_{k-1}(w | h')) / sum_v c_k(h v)
    gamma_k(h) = sum over the w with c_k(h w) > 0 of D_k(c_k(h w))
    p_0(w)     = 1 / V                          (uniform over the vocabulary)

where ``c_k`` is the raw count for the highest order ``k = n`` and, below it, the continuation
count ``N1+(. h w)``: the number of distinct characters seen before ``h w`` (the start of the
text counts as one more such character). The discounts come from ``n_r``, the number of
order-``k`` n-grams whose count (as used at that order) is ``r``:

- ``smoothing="kn"``: one discount ``D = n1 / (n1 + 2 n2)`` (Ney, Essen & Kneser 1994), so
  ``gamma_k(h) = D * N1+(h .)``;
- ``smoothing="mkn"`` (modified, Chen & Goodman's best): ``Y = n1 / (n1 + 2 n2)``,
  ``D(1) = 1 - 2Y n2/n1``, ``D(2) = 2 - 3Y n3/n2``, ``D(3+) = 3 - 4Y n4/n3``.

A context never seen followed by a character (``sum_v c_k(h v) = 0``), or one longer than the
history available, uses ``p_{k-1}`` unchanged. With ``0 <= D(r) <= r`` (estimates are clipped
there) every ``p_k(. | h)`` sums to 1 over the vocabulary, and with ``D(1) > 0`` every character
gets a probability > 0.

Storage is a trie in sorted arrays: the order-``k`` n-grams are the sorted unique keys
``id_{k-1}(h) * V + w`` (``id`` = index in the previous order's array), so a lookup is one
``np.searchsorted`` per order and query, and counting is one ``np.unique`` per order over the
training ids. Memory is about 23 bytes per distinct n-gram over all orders (War and Peace's
2.56M training characters at order 20: 27.7M n-grams, 625 MB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from charlm.errors import CharLMError
from charlm.units import loss_to_metrics


#: The discount schemes: one discount per order, or Chen & Goodman's modified three.
SMOOTHINGS = ("kn", "mkn")


class KneserNeyLM:
    """Interpolated Kneser-Ney character n-gram model (see the module docstring for the formula).

    Args:
        order: ``n``, the longest n-gram (the context is ``n - 1`` characters); >= 1.
        vocab_size: ``V``, ids are ``0 .. V - 1`` (the corpus's whole vocabulary, so characters
            absent from the training text still get a probability).
        smoothing: ``"kn"`` (one discount per order) or ``"mkn"`` (modified: three per order).
        discount: a fixed discount ``D`` in (0, 1] for every order and count instead of the
            estimates (``smoothing`` is then irrelevant).

    Raises:
        CharLMError: if ``order < 1``, ``vocab_size < 1``, ``smoothing`` is unknown or the
            discount is outside (0, 1].
    """

    def __init__(self, order: int, vocab_size: int, smoothing: str = "kn", discount: float | None = None):
        if int(order) < 1:
            raise CharLMError(f"order={order} must be >= 1 (the n of the n-gram)")
        if int(vocab_size) < 1:
            raise CharLMError(f"vocab_size={vocab_size} must be >= 1")
        if discount is not None and not 0.0 < float(discount) <= 1.0:
            raise CharLMError(f"discount={discount} must be in (0, 1] (or null to estimate it per order)")
        if smoothing not in SMOOTHINGS:
            raise CharLMError(f"smoothing={smoothing!r} is not one of {list(SMOOTHINGS)}")
        self.smoothing = smoothing
        self.order = int(order)
        self.vocab_size = int(vocab_size)
        self.fixed_discount = None if discount is None else float(discount)
        self.keys: list[np.ndarray] = []  # per order k = 1..n (index k - 1): sorted parent*V + w
        self.counts: list[np.ndarray] = []  # int32 c_k per n-gram
        self.denoms: list[np.ndarray] = []  # per context (order k - 1 id): sum of children's c_k
        self.gammas: list[np.ndarray] = []  # per context: gamma_k, the mass given to order k - 1
        self.discounts: list[tuple[float, float, float]] = []  # per order: D(1), D(2), D(3+)
        self.train_chars = 0

    # ------------------------------------------------------------------ training
    def fit(self, ids: np.ndarray) -> KneserNeyLM:
        """Count every n-gram of order 1..n in ``ids`` (int ``[N]``, values < ``vocab_size``).

        Raises:
            CharLMError: if ``ids`` is empty or holds an id outside the vocabulary.
        """
        s = np.asarray(ids).astype(np.int64, copy=False)
        n_chars = int(s.shape[0])
        if n_chars < 1:
            raise CharLMError("the n-gram model needs at least one training character")
        if s.min() < 0 or s.max() >= self.vocab_size:
            raise CharLMError(f"training ids must be in [0, {self.vocab_size}), got [{s.min()}, {s.max()}]")
        V = self.vocab_size
        self.keys, self.counts, self.denoms, self.gammas, self.discounts = [], [], [], [], []
        self.train_chars = n_chars
        prev_ids: np.ndarray | None = None  # order k-1 id of the n-gram ending at each position (from k-2)
        for k in range(1, self.order + 1):
            if n_chars < k:
                break  # no n-gram this long: higher orders back off (their contexts are never seen)
            if k == 1:
                key = s
            else:
                key = prev_ids[:-1] * V + s[k - 1 :]  # n-grams ending at positions k-1 .. N-1
            uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
            inv = inv.reshape(-1).astype(np.int64)
            if k > 1:
                # continuation counts of order k-1: distinct left extensions of each (k-1)-gram, from
                # the suffix of every distinct k-gram; the (k-1)-gram at the very start has one more
                suffix = prev_ids[first + 1]
                cont = np.bincount(suffix, minlength=self.keys[-1].shape[0])
                cont[prev_ids[0]] += 1
                self._set_level_counts(k - 1, cont)
            n_ctx = 1 if k == 1 else self.keys[-1].shape[0]
            self.keys.append(uniq.astype(_key_dtype(n_ctx * V), copy=False))
            self.counts.append(None)  # type: ignore[arg-type]  # set below (raw) or at order k+1 (continuation)
            self.denoms.append(None)  # type: ignore[arg-type]
            self.gammas.append(None)  # type: ignore[arg-type]
            self.discounts.append((math.nan,) * 3)
            if k == self.order or n_chars < k + 1:
                self._set_level_counts(k, np.bincount(inv, minlength=uniq.shape[0]))
            prev_ids = inv
            del key, first
        return self

    def _set_level_counts(self, k: int, c: np.ndarray) -> None:
        """Store order ``k``'s counts, per-context sums and gammas, and its discounts."""
        keys = self.keys[k - 1]
        n_ctx = 1 if k == 1 else self.keys[k - 2].shape[0]
        parent = (keys // self.vocab_size).astype(np.int64)
        d = self._estimate_discounts(c)
        self.counts[k - 1] = c.astype(np.int32)
        self.denoms[k - 1] = np.bincount(parent, weights=c, minlength=n_ctx).astype(np.int64)
        self.gammas[k - 1] = np.bincount(parent, weights=np.asarray(d)[np.minimum(c, 3) - 1], minlength=n_ctx)
        self.discounts[k - 1] = d

    def _estimate_discounts(self, c: np.ndarray) -> tuple[float, float, float]:
        """``(D(1), D(2), D(3+))`` from the counts ``c`` of one order (see the module docstring)."""
        if self.fixed_discount is not None:
            return (self.fixed_discount,) * 3
        n = [int(np.count_nonzero(c == r)) for r in (1, 2, 3, 4)]
        if n[0] == 0:  # no singletons (tiny texts): a middle value
            return (0.5, 0.5, 0.5)
        y = n[0] / (n[0] + 2 * n[1])
        if self.smoothing == "kn" or min(n) == 0:
            return (y, y, y)
        d1 = 1 - 2 * y * n[1] / n[0]
        d2 = 2 - 3 * y * n[2] / n[1]
        d3 = 3 - 4 * y * n[3] / n[2]
        return (float(np.clip(d1, 1e-3, 1.0)), float(np.clip(d2, 0.0, 2.0)), float(np.clip(d3, 0.0, 3.0)))

    @property
    def num_ngrams(self) -> list[int]:
        """Distinct n-grams stored per order ``[n_1, ..., n_n]``."""
        return [int(k.shape[0]) for k in self.keys]

    def nbytes(self) -> int:
        """Bytes held by the model's arrays."""
        return sum(a.nbytes for arrs in (self.keys, self.counts, self.denoms, self.gammas) for a in arrs if a is not None)

    # ------------------------------------------------------------------ scoring
    def _lookup(self, k: int, ctx: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Order-``k`` ids of the n-grams ``(ctx, w)`` (``-1`` where unseen or ``ctx < 0``)."""
        out = np.full(ctx.shape[0], -1, dtype=np.int64)
        if k > len(self.keys):  # an order longer than the training text: never seen
            return out
        keys = self.keys[k - 1]
        ok = ctx >= 0
        if not ok.any() or keys.shape[0] == 0:
            return out
        q = (ctx[ok] * self.vocab_size + w[ok]).astype(keys.dtype)  # < n_ctx * V: fits (see _key_dtype)
        pos = np.searchsorted(keys, q)
        pos_c = np.minimum(pos, keys.shape[0] - 1)
        hit = keys[pos_c] == q
        res = np.where(hit, pos_c, -1)
        out[ok] = res
        return out

    def _interpolate(self, ctxs: Sequence[np.ndarray] | None, w: np.ndarray, ctx_fn=None) -> np.ndarray:
        """``p(w | context)`` for ``Q`` queries, order by order; ``ctx_fn(k)`` (or ``ctxs[k-1]``)
        gives the order-``k - 1`` context ids ``[Q]`` (``-1``: unseen or too short)."""
        q = w.shape[0]
        p = np.full(q, 1.0 / self.vocab_size)
        for k in range(1, len(self.keys) + 1):
            ctx = ctx_fn(k) if ctx_fn is not None else ctxs[k - 1]
            valid = ctx >= 0
            denom = np.zeros(q, dtype=np.float64)
            gamma = np.zeros(q, dtype=np.float64)
            denom[valid] = self.denoms[k - 1][ctx[valid]]
            gamma[valid] = self.gammas[k - 1][ctx[valid]]
            use = denom > 0
            if not use.any():
                continue
            gid = self._lookup(k, np.where(use, ctx, -1), w)
            c = np.where(gid >= 0, self.counts[k - 1][np.maximum(gid, 0)], 0)
            d = np.asarray(self.discounts[k - 1])[np.clip(c, 1, 3) - 1]
            num = np.maximum(c - d, 0.0) + gamma * p
            p = np.where(use, num / np.where(use, denom, 1.0), p)
        return p

    def log_probs(self, ids: np.ndarray) -> np.ndarray:
        """Natural-log probability of every character after the first, given the up to ``n - 1``
        characters before it in ``ids`` (the first character is context only, as in
        :func:`charlm.evaluation.evaluate`).

        Args:
            ids: int ``[N]`` ids (``N >= 2``; a memory map is fine).

        Returns:
            float64 ``[N - 1]``: ``log p(ids[j] | ids[max(0, j-n+1):j])`` for ``j = 1 .. N-1``.

        Raises:
            CharLMError: if the model is not fitted, ``ids`` has fewer than 2 characters or an id
                outside the vocabulary.
        """
        if not self.keys:
            raise CharLMError("the n-gram model is not fitted: call fit(train_ids) first")
        s = np.asarray(ids).astype(np.int64, copy=False)
        if s.shape[0] < 2:
            raise CharLMError(f"the text to score has {s.shape[0]} character(s); scoring needs at least 2")
        if s.min() < 0 or s.max() >= self.vocab_size:
            raise CharLMError(f"ids must be in [0, {self.vocab_size}), got [{s.min()}, {s.max()}]")
        m = s.shape[0]
        w = s[1:]
        # ids_prev[j]: order k-1 id of the (k-1)-gram ending at position j (-1: unseen / too short)
        ids_prev = np.zeros(m, dtype=np.int64)  # order 0: the empty context, id 0, everywhere

        def ctx_fn(k: int) -> np.ndarray:
            nonlocal ids_prev
            if k > 1:  # advance the chain: order k-1 ids of (k-1)-grams ending at each position
                # order k-2 id of the gram ending at j-1; the empty gram (order 0) ends before position 0 too
                ctx_before = np.concatenate(([0 if k == 2 else -1], ids_prev[:-1]))
                ids_prev = self._lookup(k - 1, ctx_before, s)
            return ids_prev[:-1]  # the context of w = s[j] is the (k-1)-gram ending at j-1

        return np.log(self._interpolate(None, w, ctx_fn))

    def loss(self, ids: np.ndarray) -> dict[str, float]:
        """``{"loss": nats/char, "bpc", "ppl", "chars", "nats"}`` over ``ids[1:]`` (see :meth:`log_probs`)."""
        lp = self.log_probs(ids)
        nats = float(-lp.sum())
        loss = nats / lp.shape[0]
        return {**loss_to_metrics(loss), "chars": int(lp.shape[0]), "nats": nats}

    def distribution(self, context: Sequence[int] | np.ndarray) -> np.ndarray:
        """``p(. | context)``: float64 ``[V]`` over the whole vocabulary (sums to 1); only the
        last ``n - 1`` characters of ``context`` matter."""
        if not self.keys:
            raise CharLMError("the n-gram model is not fitted: call fit(train_ids) first")
        ctx = [int(c) for c in np.asarray(context).reshape(-1)][-(self.order - 1) :] if self.order > 1 else []
        # ctx_ids[j]: order-j id of the context's last j characters (-1: unseen), j = 0 .. len(ctx)
        ctx_ids = [0]
        for j in range(1, len(ctx) + 1):
            suffix = ctx[len(ctx) - j :]
            cur = 0
            for i, c in enumerate(suffix):
                cur = int(self._lookup(i + 1, np.array([cur]), np.array([c]))[0]) if cur >= 0 else -1
            ctx_ids.append(cur)
        V = self.vocab_size
        w = np.arange(V, dtype=np.int64)
        ctxs = [np.full(V, ctx_ids[k - 1] if k - 1 < len(ctx_ids) else -1, dtype=np.int64) for k in range(1, len(self.keys) + 1)]
        return self._interpolate(ctxs, w)


def _key_dtype(bound: int):
    """The smallest unsigned dtype holding every key ``< bound`` (``n_ctx * V``)."""
    return np.uint32 if bound <= 2**32 else np.uint64
