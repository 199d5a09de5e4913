"""The synthetic language: ``SyntheticLanguage`` (sample, exact log-probabilities, entropy rate) and
``make_synthetic_corpus``. The process and its entropy-rate derivations: docs/synthetic.md."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import replace

import numpy as np
import torch

from probe.data.corpus import Corpus, CorpusError, Vocab
from probe.data.synthetic_spec import SyntheticSpec, parse_synthetic_spec


def _rng(generator_or_seed) -> np.random.Generator:
    """A numpy Generator from an int seed, a numpy Generator, a torch.Generator or None (seed 0)."""
    if isinstance(generator_or_seed, np.random.Generator):
        return generator_or_seed
    if isinstance(generator_or_seed, torch.Generator):
        return np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator_or_seed)))
    return np.random.default_rng(0 if generator_or_seed is None else generator_or_seed)


class SyntheticLanguage:
    """The process of the module docstring for one spec: sampling, exact log-probabilities, entropy rate.

    Ids 0..V-1 are content tokens ("w17"), V+i is the cue for ``spec.lags[i]`` ("<lag20>").
    Marked variant (``spec.marked``): V is ``<mark>`` and V+1+i the cue for ``spec.lags[i]``.
    """

    def __init__(self, spec: SyntheticSpec):
        self.spec = spec
        V, b = spec.vocab_size, spec.branching
        # The language's structure gets its own stream, so samples never share draws with it.
        rng = np.random.default_rng([spec.seed, 0])
        perm = rng.permutation(V)
        cycle_next = np.empty(V, dtype=np.int64)
        cycle_next[perm] = np.roll(perm, -1)
        successors = np.empty((V, b), dtype=np.int64)
        for s in range(V):
            others = np.delete(np.arange(V), cycle_next[s])
            successors[s, 0] = cycle_next[s]
            successors[s, 1:] = rng.choice(others, size=b - 1, replace=False)
        self.successors = successors
        self.weights = rng.dirichlet(np.full(b, spec.concentration), size=V)
        self.transition = np.zeros((V, V))
        np.put_along_axis(self.transition, successors, self.weights, axis=1)
        self.stationary = _stationary(self.transition)
        with np.errstate(divide="ignore"):
            self._log_transition = np.log(self.transition)
            self._log_stationary = np.log(self.stationary)
        self._lags = np.asarray(spec.lags, dtype=np.int64)
        self.mark_id = V if spec.marked else None
        self.cue_offset = V + 1 if spec.marked else V  # id of the cue for spec.lags[0]

    @property
    def num_tokens(self) -> int:
        """Vocabulary size including cue tokens."""
        return self.spec.vocab_size + int(self.spec.marked) + len(self.spec.lags)

    def itos(self) -> list[str]:
        mark = ["<mark>"] if self.spec.marked else []
        return [f"w{i}" for i in range(self.spec.vocab_size)] + mark + [f"<lag{k}>" for k in self.spec.lags]

    def entropy_rate(self) -> float:
        """Entropy rate in nats/token (module docstring); exp of it is the best achievable perplexity."""
        c, L = self.spec.cue_rate, len(self.spec.lags)
        w = self.weights
        row_entropy = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=1)
        binary = 0.0 if c == 0 else -c * math.log(c) - (1 - c) * math.log(1 - c)
        hc = float(self.stationary @ row_entropy)  # mean entropy of one chain draw
        if self.spec.marked:
            mean_k = float(np.mean(self._lags))
            cycle_entropy = binary + (1 - c) * hc + c * (math.log(L) + hc * mean_k)
            return cycle_entropy / ((1 - c) + c * (mean_k + 3))
        h_free = binary + c * math.log(L) + (1 - c) * hc
        return h_free / (1 + c)

    # ------------------------------------------------------------------ sampling

    def sample(self, n: int, generator_or_seed=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` tokens of the process as (ids, lag): lag[t] = k where token t is a forced copy at lag k, else 0.

        generator_or_seed: int seed, numpy Generator or torch.Generator.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        rng = _rng(generator_or_seed)
        if self.spec.marked:
            return self._sample_marked(n, rng)
        V, lags = self.spec.vocab_size, self._lags
        # Unit j has exactly j non-cue tokens before it, so "no cue before
        # max(lags) non-cue tokens exist" means units 0..max(lags)-1 are chain units.
        is_recall = rng.random(n) < self.spec.cue_rate
        is_recall[: int(lags[-1])] = False
        lengths = 1 + is_recall.astype(np.int64)
        ends = np.cumsum(lengths)
        n_units = int(np.searchsorted(ends, n)) + 1  # the first unit that reaches n tokens
        is_recall, lengths, ends = is_recall[:n_units], lengths[:n_units], ends[:n_units]
        lag_index = rng.integers(len(lags), size=n_units)
        lag = np.where(is_recall, lags[lag_index], 0)

        values = np.empty(n_units, dtype=np.int64)
        values[~is_recall] = self._chain(int((~is_recall).sum()), rng)
        values = values[_resolve_copies(lag)]

        starts = ends - lengths
        ids = np.empty(int(ends[-1]), dtype=np.int64)
        lag_out = np.zeros_like(ids)
        ids[starts[~is_recall]] = values[~is_recall]
        cue_at = starts[is_recall]
        ids[cue_at] = V + lag_index[is_recall]
        ids[cue_at + 1] = values[is_recall]
        lag_out[cue_at + 1] = lag[is_recall]
        return torch.from_numpy(ids[:n].copy()), torch.from_numpy(lag_out[:n].copy())

    def _sample_marked(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample`` for the marked variant: cycles of one chain draw, or mark, source, K-1 draws, cue, copy."""
        lags = self._lags
        # Cycle i is a recall (type B) with probability c, of K+3 tokens, else one
        # chain draw. n cycles always reach n tokens; keep those up to the first that does.
        is_recall = rng.random(n) < self.spec.cue_rate
        lag_index = rng.integers(len(lags), size=n)
        k = lags[lag_index]
        lengths = np.where(is_recall, k + 3, 1)
        ends = np.cumsum(lengths)
        n_cycles = int(np.searchsorted(ends, n)) + 1
        is_recall, lag_index, k, ends = is_recall[:n_cycles], lag_index[:n_cycles], k[:n_cycles], ends[:n_cycles]
        starts = ends - np.where(is_recall, k + 3, 1)
        total = int(ends[-1])

        mark_at = starts[is_recall]
        source_at = mark_at + 1
        cue_at = source_at + k[is_recall]
        copy_at = cue_at + 1
        ids = np.empty(total, dtype=np.int64)
        lag_out = np.zeros(total, dtype=np.int64)
        is_chain = np.ones(total, dtype=bool)
        is_chain[mark_at] = is_chain[cue_at] = is_chain[copy_at] = False
        ids[is_chain] = self._chain(int(is_chain.sum()), rng)  # chain draws in stream order
        ids[mark_at] = self.mark_id
        ids[cue_at] = self.cue_offset + lag_index[is_recall]
        ids[copy_at] = ids[source_at]
        lag_out[copy_at] = k[is_recall]
        return torch.from_numpy(ids[:n].copy()), torch.from_numpy(lag_out[:n].copy())

    def _chain(self, m: int, rng: np.random.Generator) -> np.ndarray:
        """m consecutive states of the Markov chain, the first drawn from pi."""
        if m == 0:
            return np.empty(0, dtype=np.int64)
        u = rng.random(m)
        # Inverse-CDF draws; each step depends on the last, so this is a loop,
        # over plain lists because that is several times faster than numpy
        # scalar indexing (200k steps take ~0.1 s).
        cum = np.cumsum(self.weights, axis=1)
        cum[:, -1] = np.inf  # guards against rounding: u < 1 always lands in the row
        cum_rows, succ_rows = cum.tolist(), self.successors.tolist()
        first_cdf = np.cumsum(self.stationary)
        x = min(int(np.searchsorted(first_cdf, u[0], side="right")), self.spec.vocab_size - 1)
        out = [x]
        for ui in u[1:].tolist():
            x = succ_rows[x][bisect_right(cum_rows[x], ui)]
            out.append(x)
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ exact log-probabilities

    def log_prob(self, ids: torch.Tensor) -> torch.Tensor:
        """True log P(token t | tokens < t) for every t (float64); -inf where impossible."""
        x = np.asarray(torch.as_tensor(ids).reshape(-1).cpu(), dtype=np.int64)
        V, c, L = self.spec.vocab_size, self.spec.cue_rate, len(self.spec.lags)
        if x.size and (x.min() < 0 or x.max() >= self.num_tokens):
            raise ValueError(f"ids must be in [0, {self.num_tokens}); got range [{x.min()}, {x.max()}]")
        if self.spec.marked:
            return torch.from_numpy(self._log_prob_marked(x))
        n = x.size
        logp = np.full(n, -np.inf)
        is_cue = x >= V
        forced = np.zeros(n, dtype=bool)
        forced[1:] = is_cue[:-1]
        free = ~forced
        nc_before = np.cumsum(~is_cue) - (~is_cue)  # non-cue tokens strictly before t
        cue_allowed = nc_before >= self._lags[-1]
        with np.errstate(divide="ignore"):
            log_cue, log_content = math.log(c / L) if c > 0 else -np.inf, np.log1p(-c)

        # A cue at a free position, once cues are allowed.
        logp[is_cue & free & cue_allowed] = log_cue

        # A forced position must repeat the k-th previous non-cue token.
        f = np.flatnonzero(forced)
        if f.size:
            k = self._lags[x[f - 1] - V]
            source = nc_before[f] - k
            noncue_positions = np.flatnonzero(~is_cue)
            ok = ~is_cue[f] & (source >= 0)
            ok[ok] = x[f[ok]] == x[noncue_positions[source[ok]]]
            logp[f[ok]] = 0.0

        # A content token at a free position: a chain draw from the current state.
        chain = ~is_cue & free
        last_chain = np.maximum.accumulate(np.where(chain, np.arange(n), -1))
        state_at = np.concatenate([[-1], last_chain[:-1]])  # last chain token strictly before t
        t = np.flatnonzero(chain)
        has_state = state_at[t] >= 0
        draw = self._log_stationary[x[t]]  # the first chain draw comes from pi
        draw[has_state] = self._log_transition[x[state_at[t[has_state]]], x[t[has_state]]]
        logp[t] = np.where(cue_allowed[t], log_content, 0.0) + draw
        return torch.from_numpy(logp)

    def _log_prob_marked(self, x: np.ndarray) -> np.ndarray:
        """``log_prob`` for the marked variant: a sequential scan of the process's state (module docstring).

        After an impossible token the scan goes on from the state the token
        would lead to where that is clear: content is read as what its position
        expects (chain draw or copy), a mark starts a new recall, a cue while a
        recall is pending ends it (the copy of its source comes next), and a
        cue with none pending changes nothing.
        """
        V, c, lags = self.spec.vocab_size, self.spec.cue_rate, self.spec.lags
        mark, cue0, max_lag = self.mark_id, self.cue_offset, lags[-1]
        neg_inf = -math.inf
        log_c, log_free_content = math.log(c), math.log1p(-c)
        # Per j (chain draws since the source): the cue allowed next, log h, log(1-h).
        cue_at_j, log_h, log_not_h = [], [], []
        for j in range(max_lag):
            remaining = sum(1 for k in lags if k >= j + 1)
            h = 1.0 / remaining if (j + 1) in lags else 0.0
            cue_at_j.append(cue0 + lags.index(j + 1) if h > 0 else -1)
            log_h.append(math.log(h) if h > 0 else neg_inf)
            log_not_h.append(math.log1p(-h) if h < 1 else neg_inf)
        log_p = self._log_transition.tolist()
        log_pi = self._log_stationary.tolist()

        FREE, AFTER_MARK, PENDING, AFTER_CUE = range(4)
        mode, j, source, state = FREE, 0, -1, -1  # state: last chain draw (-1: none yet, draw from pi)
        out = [neg_inf] * x.size
        for t, tok in enumerate(x.tolist()):
            if tok < V:  # content
                if mode == AFTER_CUE:  # the forced copy
                    out[t] = 0.0 if tok == source else neg_inf
                    mode = FREE
                    continue
                draw = log_pi[tok] if state < 0 else log_p[state][tok]
                if mode == FREE:
                    out[t] = log_free_content + draw
                elif mode == AFTER_MARK:  # the source
                    out[t] = draw
                    mode, j, source = PENDING, 0, tok
                else:  # PENDING
                    out[t] = (log_not_h[j] if j < max_lag else neg_inf) + draw
                    j += 1
                state = tok
            elif tok == mark:
                out[t] = log_c if mode == FREE else neg_inf
                mode = AFTER_MARK
            else:  # a cue
                if mode == PENDING:
                    ok = j < max_lag and tok == cue_at_j[j]
                    out[t] = log_h[j] if ok else neg_inf
                    mode = AFTER_CUE
                # else: impossible (out[t] stays -inf) and the state is unchanged
        return np.asarray(out, dtype=np.float64)


def _stationary(P: np.ndarray) -> np.ndarray:
    """pi with pi P = pi, sum pi = 1, solved exactly (the chain is irreducible, so pi is unique)."""
    V = P.shape[0]
    A = P.T - np.eye(V)
    A[-1] = 1.0  # replace one (redundant) balance equation by the normalisation
    rhs = np.zeros(V)
    rhs[-1] = 1.0
    pi = np.linalg.solve(A, rhs)
    return np.clip(pi, 0.0, None) / np.clip(pi, 0.0, None).sum()


def _resolve_copies(lag: np.ndarray) -> np.ndarray:
    """For each unit, the chain unit whose value it ends up holding.

    A recall unit j copies unit j - lag[j] (each unit holds one non-cue token),
    which may itself be a copy; pointer jumping follows the chains in log steps.
    """
    source = np.arange(lag.size) - lag
    while True:
        nxt = source[source]
        if np.array_equal(nxt, source):
            return source
        source = nxt


def make_synthetic_corpus(spec: SyntheticSpec) -> Corpus:
    """Train/valid/test sampled independently (and deterministically) from the spec's language."""
    language = SyntheticLanguage(spec)
    sizes = {"train": spec.n_train, "valid": spec.n_valid, "test": spec.n_test}
    # Stream 0 of the seed builds the language; streams 1-3 sample the splits.
    samples = {
        split: language.sample(n, np.random.default_rng([spec.seed, i]))
        for i, (split, n) in enumerate(sizes.items(), start=1)
    }
    rate = language.entropy_rate()
    variant = (
        "marked recalls: <mark> before each source, the cue just before its copy"
        if spec.marked
        else "n-back recalls: the cue comes only just before the copy"
    )
    note = (
        f"generated in-process by probe.data.synthetic ({spec.describe()}; {variant}); train/valid/test are independent "
        f"samples of {spec.n_train}/{spec.n_valid}/{spec.n_test} tokens; entropy rate {rate:.4f} nats/token "
        f"(best achievable perplexity {math.exp(rate):.3f})"
    )
    return Corpus(
        name=spec.to_string(),
        level="word",
        vocab=Vocab(language.itos()),
        train=samples["train"][0],
        valid=samples["valid"][0],
        test=samples["test"][0],
        split="canonical",
        split_note=note,
        entropy_rate=rate,
        annotations={f"{split}_lag": lag for split, (_, lag) in samples.items()},
    )


def load_synthetic(name: str, *, seed: int | None = None) -> Corpus:
    """``load_corpus`` for ``synthetic[:...]`` names; ``seed`` overrides the spec's unless they conflict."""
    spec = parse_synthetic_spec(name)
    if seed is not None:
        seed_in_name = any(item.split("=")[0].strip() == "seed" for item in name.partition(":")[2].split(","))
        if seed_in_name and seed != spec.seed:
            raise CorpusError(f"{name!r} sets seed={spec.seed} but seed={seed} was also passed; give one")
        spec = replace(spec, seed=seed)
    return make_synthetic_corpus(spec)
