"""The synthetic corpus's spec: ``SyntheticSpec`` and its grammar ``synthetic:key=value,...``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from probe.data.corpus import CorpusError


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic corpus; ``parse_synthetic_spec`` reads them from a string."""

    vocab_size: int = 64  # content tokens (cue tokens come on top)
    lags: tuple[int, ...] = (2, 5, 10, 20, 50, 100)
    cue_rate: float = 0.1  # probability that a unit is a cue + recall (marked: that a free position is <mark>)
    marked: bool = False  # the marked variant: <mark> before the source, the cue before the copy
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
        if isinstance(self.marked, (bool, np.bool_)) or self.marked in (0, 1):
            object.__setattr__(self, "marked", bool(self.marked))
        else:
            problems.append(f"mark must be 0 or 1 (got {self.marked!r})")
        if self.vocab_size < 2:
            problems.append(f"vocab must be >= 2 (got {self.vocab_size})")
        if not lags or lags[0] < 1 or len(set(lags)) != len(lags):
            problems.append(f"lags must be distinct integers >= 1 (got {self.lags})")
        if self.marked is True and not 0 < self.cue_rate < 1:
            problems.append(f"cue must be in (0, 1) with mark=1 (got {self.cue_rate})")
        elif not 0 <= self.cue_rate < 1:
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

    def title(self) -> str:
        """How a report's title names the language: "synthetic language (16 tokens, copies 3, 8 and 20 back)"."""
        lags = [str(k) for k in self.lags]
        listed = lags[0] if len(lags) == 1 else ", ".join(lags[:-1]) + " and " + lags[-1]
        kind = "marked copies" if self.marked else "copies"
        return f"synthetic language ({self.vocab_size} tokens, {kind} {listed} back)"

    def describe(self) -> str:
        """Every parameter, for notes and reports."""
        return ", ".join(f"{_KEY_OF[k]}={_format(v)}" for k, v in asdict(self).items())


# Short keys of spec strings -> field names.
_FIELD_OF = {
    "vocab": "vocab_size",
    "lags": "lags",
    "cue": "cue_rate",
    "mark": "marked",
    "branching": "branching",
    "concentration": "concentration",
    "train": "n_train",
    "valid": "n_valid",
    "test": "n_test",
    "seed": "seed",
}
_KEY_OF = {v: k for k, v in _FIELD_OF.items()}


def _format(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    return repr(value)  # repr round-trips floats exactly


def parse_synthetic_spec(text: str) -> SyntheticSpec:
    """Read ``synthetic`` or ``synthetic:key=value,...`` (e.g. ``synthetic:vocab=32,lags=5+20+50,cue=0.2``).

    Keys: vocab, lags (joined by +), cue, mark (0 or 1, also false/true; 1
    selects the marked variant), branching, concentration, train, valid, test
    (token counts), seed. Unknown keys and bad values are errors that list
    the valid keys.
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
    if key == "mark":
        flag = {"0": False, "1": True, "false": False, "true": True}.get(raw.lower())
        if flag is None:
            raise CorpusError(f"synthetic key 'mark' must be 0 or 1 (or false/true) (got {raw!r}); {valid_keys}")
        return flag
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


