r"""A synthetic corpus whose entropy rate is known exactly, with planted long-range recalls.

The process
-----------
Content tokens 0..V-1 follow a first-order Markov chain P: each row has
``branching`` successors with Dirichlet(``concentration``) weights, so there is
strong local structure. One successor of every state is its next state on a
random cycle through all V states, which makes the chain irreducible, so its
stationary distribution pi is unique; pi is solved exactly in float64.

Cue tokens ``<lagk>``, one per lag k in ``lags``, plant recalls. The stream is
built from *units*, each contributing one non-cue token:
  * a chain unit: the next draw x ~ P(.|s) of the chain (the first draw
    x_0 ~ pi); the chain state becomes s = x;
  * a recall unit: a cue ``<lagk>``, k uniform over ``lags``, then the forced
    token: a copy of the k-th previous non-cue token counting back from the
    forced position (lag k = the token k non-cue positions earlier). Copies do
    not move the chain state.
A unit is a recall unit with probability ``cue_rate`` once at least max(lags)
non-cue tokens exist (never before), independently of everything else.

Entropy rate
------------
Call a position *free* if it starts a unit and *forced* if it follows a cue.
Given the whole history, a forced token is certain (entropy 0). At a free
position with chain state s, the next token is ``<lagk>`` with probability
c/L each (c = cue_rate, L = len(lags)) or content x with probability
(1-c) P(x|s), so its conditional entropy is

    h(s) = H_b(c) + c log L + (1-c) H(P(.|s)).

Each chain state persists for a geometric number of free positions, independent
of the state, so free positions see s ~ pi (the chain starts in pi and is
stationary). A free position is followed by a forced one with probability c,
so free positions are a fraction 1/(1+c) of the stream, and

    entropy rate = [H_b(c) + c log L + (1-c) sum_s pi(s) H(P(.|s))] / (1 + c)

nats/token; exp(rate) is the best perplexity any model can reach.
``SyntheticLanguage.log_prob`` gives the true conditional log-probability of
every token of any sequence, so the mean of -log_prob over a long sample
estimates the rate (this is how the closed form is tested). The warm-up (no
cues before max(lags) non-cue tokens) changes a sample's average by
O(max(lags)/n).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from probe.data import Corpus, CorpusError, Vocab


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic corpus; ``parse_synthetic_spec`` reads them from a string."""

    vocab_size: int = 64  # content tokens (cue tokens come on top)
    lags: tuple[int, ...] = (2, 5, 10, 20, 50, 100)
    cue_rate: float = 0.1  # probability that a unit is a cue + recall
    branching: int = 4  # successors per Markov state
    concentration: float = 1.0  # Dirichlet concentration of each row's successor weights
    n_train: int = 200_000
    n_valid: int = 20_000
    n_test: int = 20_000
    seed: int = 0

    def __post_init__(self):
        lags = tuple(sorted(int(k) for k in self.lags))
        object.__setattr__(self, "lags", lags)  # canonical form: sorted, so cue ids are ordered by lag
        problems = []
        if self.vocab_size < 2:
            problems.append(f"vocab must be >= 2 (got {self.vocab_size})")
        if not lags or lags[0] < 1 or len(set(lags)) != len(lags):
            problems.append(f"lags must be distinct integers >= 1 (got {self.lags})")
        if not 0 <= self.cue_rate < 1:
            problems.append(f"cue must be in [0, 1) (got {self.cue_rate})")
        if not 1 <= self.branching <= self.vocab_size:
            problems.append(f"branching must be in [1, vocab] (got {self.branching})")
        if not (self.concentration > 0 and math.isfinite(self.concentration)):
            problems.append(f"concentration must be > 0 (got {self.concentration})")
        for name in ("n_train", "n_valid", "n_test"):
            if getattr(self, name) < 2:
                problems.append(f"{_KEY_OF[name]} must be >= 2 tokens (got {getattr(self, name)})")
        if problems:
            raise CorpusError("invalid synthetic spec: " + "; ".join(problems))

    def to_string(self) -> str:
        """The spec as a ``synthetic:...`` string naming only non-default values (round-trips)."""
        default = SyntheticSpec()
        items = [
            f"{_KEY_OF[f.name]}={_format(getattr(self, f.name))}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        ]
        return "synthetic" + (":" + ",".join(items) if items else "")

    def describe(self) -> str:
        """Every parameter, for notes and reports."""
        return ", ".join(f"{_KEY_OF[k]}={_format(v)}" for k, v in asdict(self).items())


# Short keys of spec strings -> field names.
_FIELD_OF = {
    "vocab": "vocab_size",
    "lags": "lags",
    "cue": "cue_rate",
    "branching": "branching",
    "concentration": "concentration",
    "train": "n_train",
    "valid": "n_valid",
    "test": "n_test",
    "seed": "seed",
}
_KEY_OF = {v: k for k, v in _FIELD_OF.items()}


def _format(value) -> str:
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    return repr(value)  # repr round-trips floats exactly


def parse_synthetic_spec(text: str) -> SyntheticSpec:
    """Read ``synthetic`` or ``synthetic:key=value,...`` (e.g. ``synthetic:vocab=32,lags=5+20+50,cue=0.2``).

    Keys: vocab, lags (joined by +), cue, branching, concentration, train,
    valid, test (token counts), seed. Unknown keys and bad values are errors
    that list the valid keys.
    """
    head, _, body = text.partition(":")
    if head != "synthetic":
        raise CorpusError(f"a synthetic spec starts with 'synthetic' (got {text!r})")
    valid_keys = f"valid keys: {', '.join(_FIELD_OF)}"
    values: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if key not in _FIELD_OF:
            raise CorpusError(f"unknown synthetic key {key!r} in {text!r}; {valid_keys}")
        if not eq or not raw.strip():
            raise CorpusError(f"synthetic key {key!r} needs a value (key=value) in {text!r}; {valid_keys}")
        if _FIELD_OF[key] in values:
            raise CorpusError(f"synthetic key {key!r} given twice in {text!r}")
        values[_FIELD_OF[key]] = _parse_value(key, raw.strip(), valid_keys)
    return SyntheticSpec(**values)


def _parse_value(key: str, raw: str, valid_keys: str):
    try:
        if key == "lags":
            return tuple(int(k) for k in raw.split("+"))
        if key in ("cue", "concentration"):
            return float(raw)
        return int(raw)
    except ValueError:
        kinds = {"lags": "integers joined by +", "cue": "a number", "concentration": "a number"}
        kind = kinds.get(key, "an integer")
        raise CorpusError(f"synthetic key {key!r} must be {kind} (got {raw!r}); {valid_keys}") from None


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

    @property
    def num_tokens(self) -> int:
        """Vocabulary size including cue tokens."""
        return self.spec.vocab_size + len(self.spec.lags)

    def itos(self) -> list[str]:
        return [f"w{i}" for i in range(self.spec.vocab_size)] + [f"<lag{k}>" for k in self.spec.lags]

    def entropy_rate(self) -> float:
        """Entropy rate in nats/token (module docstring); exp of it is the best achievable perplexity."""
        c, L = self.spec.cue_rate, len(self.spec.lags)
        w = self.weights
        row_entropy = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=1)
        binary = 0.0 if c == 0 else -c * math.log(c) - (1 - c) * math.log(1 - c)
        h_free = binary + c * math.log(L) + (1 - c) * float(self.stationary @ row_entropy)
        return h_free / (1 + c)

    # ------------------------------------------------------------------ sampling

    def sample(self, n: int, generator_or_seed=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` tokens of the process as (ids, lag): lag[t] = k where token t is a forced copy at lag k, else 0.

        generator_or_seed: int seed, numpy Generator or torch.Generator.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1; got {n}")
        rng = _rng(generator_or_seed)
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
    note = (
        f"generated in-process by probe.synthetic ({spec.describe()}); train/valid/test are independent "
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
