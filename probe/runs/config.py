"""``RunConfig`` (everything that determines a run), Zaremba et al.'s presets, the learning-rate schedule, ``RunResult``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from enum import Enum

import torch

from probe.data.registry import corpus_fingerprint
from probe.model.language_model import LanguageModel, ModelConfig
from probe.placements import Placement, parse_placement
from probe.preflight import check_device_name
from kernels.layer import canonical_backend


DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("fixed", "plateau")
SELECTIONS = ("best", "final")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (the hash of this is its identity)."""

    corpus: str = "synthetic"
    split: str = "canonical"
    placement: str = "zaremba"  # a spec or a parsed Placement; kept as the canonical spec (parsed_placement: the object)
    num_layers: int = 2
    hidden_size: int = 200
    emb_size: int = 200
    tie_weights: bool = False
    batch_size: int = 20
    bptt: int = 20
    lr: float = 1.0
    lr_decay: float = 2.0
    decay_after: int = 4
    epochs: int = 13
    clip: float = 5.0
    init_scale: float = 0.1
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "auto"
    # Train on only the first N training tokens (None: all); studies use it to fit a CPU budget.
    train_tokens: int | None = None
    optimizer: str = "sgd"  # "sgd": p -= lr * grad; "adam": torch.optim.Adam(lr=lr), default betas
    schedule: str = "fixed"  # "fixed": Zaremba's; "plateau": divide by lr_decay after a non-improving epoch
    select: str = "best"  # reported/returned model: lowest validation perplexity ("best") or last ("final")
    forget_bias: float = 0.0  # added to the forget-gate biases after init (probe.model.language_model.ModelConfig)

    def __post_init__(self):
        positive = ("num_layers", "hidden_size", "emb_size", "batch_size", "bptt", "epochs")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        for name in ("lr", "lr_decay", "clip", "init_scale"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}")
        if self.train_tokens is not None and self.train_tokens < 2 * self.batch_size:
            raise ValueError(f"train_tokens must be at least 2 * batch_size; got {self.train_tokens}")
        if self.decay_after < 0:
            raise ValueError(f"decay_after must be >= 0; got {self.decay_after}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        object.__setattr__(self, "backend", canonical_backend(self.backend))
        for name, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("select", SELECTIONS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        check_device_name(self.device)
        # Stored in canonical form (every rate explicit), so two spellings of one placement
        # (zaremba, zaremba:p=0.5) are one configuration and one run id.
        placement = parse_placement(self.placement)  # a Placement is taken as it is; the field keeps the spec
        object.__setattr__(self, "placement", placement.spec)
        object.__setattr__(self, "_placement", placement)
        # A text corpus's digest, read once here, so that run_id() does no I/O (not a field: the
        # configuration names the corpus; the digest only tells its contents apart).
        object.__setattr__(self, "_corpus_sha256", corpus_fingerprint(self.corpus))

    @property
    def parsed_placement(self) -> Placement:
        """The placement as the model takes it (parsed once, when this config was built)."""
        return self._placement

    def lr_at(self, epoch: int) -> float:
        """The fixed schedule's learning rate of 1-based ``epoch``: held, then divided by lr_decay per epoch.

        (Whatever ``schedule`` is; ``learning_rates`` gives a run's actual ones.)
        """
        return self.lr / self.lr_decay ** max(0, epoch - self.decay_after)

    def run_id(self) -> str:
        """A stable hash of the full configuration: the run folder's name (no I/O).

        ``corpus`` is the string as typed; for the user's own text files
        (probe.data.text) their sha256 (``corpus_sha256``), read when the config
        was built, is hashed in too, so a run is never reused after a file's
        content changes. Registry and synthetic corpora are fixed by their names
        and hash as the config alone.
        """
        fields = dataclasses.asdict(self)
        if self._corpus_sha256 is not None:
            fields["corpus_sha256"] = self._corpus_sha256
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def corpus_sha256(self) -> str | None:
        """The sha256 of a text-file corpus's files when this config was built (None for registry and synthetic)."""
        return self._corpus_sha256

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            emb_size=self.emb_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            tie_weights=self.tie_weights,
            init_scale=self.init_scale,
            placement=self.parsed_placement,
            backend=self.backend,
            forget_bias=self.forget_bias,
        )


# Zaremba, Sutskever & Vinyals 2014, "Recurrent Neural Network Regularization", Table 1 and Sec. 4.1.
PRESETS: dict[str, dict] = {
    "small": dict(
        placement="none", num_layers=2, hidden_size=200, emb_size=200, batch_size=20, bptt=20,
        lr=1.0, lr_decay=2.0, decay_after=4, epochs=13, clip=5.0, init_scale=0.1,
        optimizer="sgd", schedule="fixed",
    ),
    "medium": dict(
        placement="zaremba:p=0.5", num_layers=2, hidden_size=650, emb_size=650, batch_size=20, bptt=35,
        lr=1.0, lr_decay=1.2, decay_after=6, epochs=39, clip=5.0, init_scale=0.05,
        optimizer="sgd", schedule="fixed",
    ),
    "large": dict(
        placement="zaremba:p=0.65", num_layers=2, hidden_size=1500, emb_size=1500, batch_size=20, bptt=35,
        lr=1.0, lr_decay=1.15, decay_after=14, epochs=55, clip=10.0, init_scale=0.04,
        optimizer="sgd", schedule="fixed",
    ),
    # Seconds on a CPU: for tests and smoke runs.
    # lr and init are larger than Zaremba's: at lr=1, init 0.1, two 32-unit layers sit on
    # the unigram plateau for many epochs, which makes a seconds-long run say nothing.
    "tiny": dict(
        placement="zaremba", num_layers=2, hidden_size=32, emb_size=32, batch_size=8, bptt=20,
        lr=10.0, lr_decay=2.0, decay_after=2, epochs=3, clip=5.0, init_scale=0.3,
    ),
}


def learning_rates(config: RunConfig, valid_history) -> list[float]:
    """The learning rates of epochs 1 .. len(valid_history) + 1, given the validation
    perplexities (or losses) of the epochs finished so far.

    ``fixed``: ``config.lr_at(epoch)`` (the history is not consulted). ``plateau``:
    ``config.lr`` divided by ``lr_decay`` once for every finished epoch whose
    validation value was not strictly below the best before it (the first
    epoch always is; NaN never); ``decay_after`` is not used. Pure, so a resumed run rederives its schedule
    from the per-epoch history in its checkpoint.
    """
    n = len(valid_history) + 1
    if config.schedule == "fixed":
        return [config.lr_at(epoch) for epoch in range(1, n + 1)]
    rates, misses, best = [config.lr], 0, None
    for value in valid_history:
        if _improves(value, best):
            best = value
        else:
            misses += 1
        rates.append(config.lr / config.lr_decay**misses)
    return rates


def _improves(value: float, best: float | None) -> bool:
    """Whether a validation value beats the best so far (None: no epoch yet); NaN never does."""
    return not math.isnan(value) and (best is None or value < best)


def best_epoch(epochs: list[dict]) -> int | None:
    """The 1-based epoch with the lowest ``valid_ppl`` (the first of equals; NaN never), or None."""
    best, best_value = None, None
    for e in epochs:
        if _improves(e["valid_ppl"], best_value):
            best, best_value = e["epoch"], e["valid_ppl"]
    return best


def selected_epoch(config: RunConfig, epochs: list[dict]) -> int | None:
    """The epoch whose model the run reports: ``best_epoch`` or the last, per ``config.select``."""
    if not epochs:
        return None
    return best_epoch(epochs) if config.select == "best" else epochs[-1]["epoch"]


def preset(name: str, **overrides) -> RunConfig:
    """A RunConfig from a named preset, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise ValueError(f"unknown RunConfig fields {sorted(unknown)}")
    return RunConfig(**{**PRESETS[name], **overrides})


class RunStatus(str, Enum):
    """How a run (``train``) or a study's cell (``probe.runs.cells``) ended."""

    FINISHED = "finished"
    DIVERGED = "diverged"  # a loss or weight went NaN/inf
    INTERRUPTED = "interrupted"  # stopped before its last epoch (train's stop_after_epoch); resumes from its checkpoint
    FAILED = "failed"  # a cell whose training or measurement raised (its traceback is in the run folder)
    BUSY = "busy"  # another process held the run's lock and the caller asked not to wait

    def __str__(self) -> str:
        return self.value


@dataclass
class RunResult:
    """What a finished (or diverged, or interrupted) run reports."""

    config: RunConfig
    status: RunStatus
    epochs: list[dict] = field(default_factory=list)
    valid_ppl: float = math.nan  # of the selected epoch's model
    test_ppl: float = math.nan  # of the selected epoch's model
    best_epoch: int | None = None  # lowest validation perplexity
    selected_epoch: int | None = None  # best_epoch or the last epoch, per config.select (None if diverged)
    final_valid_ppl: float = math.nan  # of the last epoch's model
    final_test_ppl: float = math.nan  # of the last epoch's model
    seconds: float = 0.0  # training time, summed over epochs (of every session, when resumed)
    run_dir: str | None = None
    wall_seconds: float = math.nan  # this session's wall time, evaluation included
    model: LanguageModel | None = None

    def to_json(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model", "config")}
        d["config"] = dataclasses.asdict(self.config)
        d["run_id"] = self.config.run_id()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunResult":
        """The RunResult a result.json holds (``to_json``'s inverse, without the model).

        A ValueError names what is missing or wrong, e.g. for a file written by an older version."""
        try:
            config = RunConfig(**d["config"])
            names = {f.name for f in dataclasses.fields(cls)} - {"config", "model", "status"}
            return cls(config=config, status=RunStatus(d["status"]), **{k: v for k, v in d.items() if k in names})
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a result.json of this version ({type(e).__name__}: {e})") from None


