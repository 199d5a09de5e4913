"""The placement study's presets: what each trains (corpora, regimes, placements or capacity variants) and
how it is measured. ``python -m studies.memory_decay --help`` lists them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass



from probe.analysis.regimes import MEMORY, REGULARISATION
from probe.measure import MeasureConfig, NaturalCopyConfig, PerturbationConfig
from probe.placements import PLACEMENT_NAMES
from probe.runs.config import RunConfig, preset


@dataclass(frozen=True)
class CorpusPlan:
    """One corpus of a study: the runs trained on it and how they are measured."""

    corpus: str
    run: dict  # RunConfig fields on top of the base preset's
    measure: MeasureConfig | None  # None: trained only (a regularisation regime needs no measurements)
    split: str = "canonical"
    optional: bool = False  # include only when its files are found
    base: str = "tiny"  # the probe.runs.train preset that ``run`` overrides
    regime: str = ""  # regimes.REGULARISATION or regimes.MEMORY in a study of two regimes; "" for one

    def run_config(self, placement: str, seed: int, device: str, **overrides) -> RunConfig:
        return preset(self.base, **{**self.run, "corpus": self.corpus, "split": self.split,
                                    "placement": placement, "seed": seed, "device": device, **overrides})


@dataclass(frozen=True)
class StudyPreset:
    name: str
    description: str
    corpora: tuple[CorpusPlan, ...]
    seeds: int
    placements: tuple[str, ...] = PLACEMENT_NAMES
    short_lag: int = 2  # the lag of the retained-influence and probe metrics
    long_lag: int = 10  # a lag for long-range influence
    # The capacity study: (placement, RunConfig overrides) cells instead of placements x one model size.
    variants: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()


def _rated(rate: float) -> tuple[str, ...]:
    """Every placement dropping at one rate, so placements differ only in where the masks go
    (the registry's defaults are the papers' rates for 650-1500-unit models)."""
    r = f"{rate:g}"
    return (
        "none", f"zaremba:p={r}", f"naive:p={r},rec={r}", f"variational:p={r},rec={r}",
        f"semeniuta:p={r},rec={r}", f"zoneout:p={r},zc={r},zh=0.025", f"weight_drop:p={r},w={r}",
        f"rnndrop:p={r},cell={r}",
    )


def _doses(rates=(0.1, 0.3, 0.5)) -> tuple[str, ...]:
    """none plus zaremba, naive and variational at each rate: the dose-response grid."""
    out = ["none"]
    for name in ("zaremba", "naive", "variational"):
        for rate in rates:
            r = f"{rate:g}"
            out.append(f"zaremba:p={r}" if name == "zaremba" else f"{name}:p={r},rec={r}")
    return tuple(out)


# The synthetic language with marked recalls (probe.data.synthetic, docs/synthetic.md): a Markov chain over
# 16 tokens, and copies of a <mark>ed token planted 3, 8 and 20 tokens later. Its regime was chosen by
# the validity checks (docs/regime.md), never by how the placements compare.
_SYNTHETIC_SMOKE = "synthetic:vocab=8,train=6000,valid=3000,test=2000,lags=2+5+10,cue=0.3,mark=1"
# Two regimes of one language (docs/regime.md): scarce data, where none overfits (regularisation), and
# enough data, where the memory reference learns every planted lag close to the optimum (memory).
_SYNTHETIC_DEFAULT = "synthetic:vocab=16,train=30000,valid=10000,test=10000,lags=3+8+20,cue=0.2,mark=1"
_SYNTHETIC_MEMORY = "synthetic:vocab=16,train=80000,valid=10000,test=10000,lags=3+8+20,cue=0.2,mark=1"
_DEFAULT_RUN = dict(num_layers=2, hidden_size=96, emb_size=96, batch_size=16, bptt=35, optimizer="adam", forget_bias=1.0,
                    lr=5e-3, lr_decay=2.0, decay_after=19, epochs=23, init_scale=0.1, clip=5.0)
_MEMORY_RUN = dict(_DEFAULT_RUN, decay_after=9, epochs=13)
_DEFAULT_MEASURE = MeasureConfig(
    max_lag=30, max_tokens=10_000, influence_windows=128, gradient_windows=64, probe_positions=3000,
    probe_steps=40, probe_cell=False, context_lengths=(1, 2, 5, 10, 20, 50, 100), context_targets=300,
    position_windows=64,
)
# The capacity ladder: none at hidden sizes about x1.4 apart around the default's 96, embeddings as wide.
CAPACITY_SIZES = (16, 24, 32, 48, 64, 96, 128)
CAPACITY_RATES = (0.3, 0.5)


def _capacity_variants() -> tuple:
    ladder = [("none", (("hidden_size", h), ("emb_size", h))) for h in CAPACITY_SIZES]
    models = []
    for rate in CAPACITY_RATES:
        r = f"{rate:g}"
        models += [(f"zaremba:p={r}", ()), (f"naive:p={r},rec={r}", ()), (f"variational:p={r},rec={r}", ()),
                   (f"zoneout:p={r},zc={r},zh=0.025", ())]
    return tuple(ladder + models)


_SMOKE = CorpusPlan(
    _SYNTHETIC_SMOKE,
    dict(num_layers=2, hidden_size=24, emb_size=24, batch_size=8, bptt=24, epochs=3, decay_after=2,
         optimizer="adam", lr=1e-2),
    MeasureConfig(max_lag=12, max_tokens=2000, influence_windows=64, gradient_windows=32,
                  probe_positions=600, probe_steps=30, probe_classes=20, context_lengths=(1, 2, 5, 10, 20),
                  context_targets=100, position_windows=32, stream_batch=8),
)
_DEFAULT = (CorpusPlan(_SYNTHETIC_DEFAULT, _DEFAULT_RUN, None, regime=REGULARISATION),
            CorpusPlan(_SYNTHETIC_MEMORY, _MEMORY_RUN, _DEFAULT_MEASURE, regime=MEMORY))
_MEMORY_PLAN = _DEFAULT[1]
# Natural text is measured for memory without planted copies: context perturbation beyond d and natural copies
# (docs/measurements.md). The context-length curve and the influence decay run as on any corpus.
_NATURAL_MEASURE = MeasureConfig(
    max_lag=30, max_tokens=20_000, influence_windows=128, gradient_windows=64, probe_positions=6000,
    probe_steps=50, probe_cell=False, context_lengths=(1, 2, 5, 10, 20, 50, 100), context_targets=300,
    position_windows=64,
    perturbation=PerturbationConfig(distances=(1, 5, 20, 50, 100, 200), prefix=250, targets=300),
    natural_copies=NaturalCopyConfig(prefix=200, per_bin=100),
)
# Tiny Shakespeare, the regularisation regime of the character pilots (docs/regime.md, "Real text"): 30k
# training characters, 25 epochs at a constant rate, 2 x 192 units (characters need no wide embedding), so
# that none peaks and then rises. At every size a CPU trains, the memory reference uses under 50 characters
# of context, so the context_used check says that the memory half cannot be answered here.
_SHAKESPEARE = CorpusPlan(
    "tinyshakespeare",
    dict(_DEFAULT_RUN, hidden_size=192, emb_size=64, epochs=25, decay_after=25, train_tokens=30_000),
    _NATURAL_MEASURE,
)
# Penn Treebank words at the default's model: the first 70k training words (about all of the substitute
# split's training text, PTB valid), 12 epochs at a constant rate; canonical where ptb.train.txt is found.
# Annealed (halved after epoch 6), six seeds converge but none no longer overfits and no placement beats it
# (docs/regime.md, "the word preset with an annealed rate"): this regime's gain goes with the constant rate.
_PTB = CorpusPlan(
    "ptb",
    dict(_DEFAULT_RUN, epochs=12, decay_after=12, train_tokens=70_000),
    dataclasses.replace(_NATURAL_MEASURE, max_tokens=20_000, probe_positions=4000),
    split="auto",
)

PRESETS: dict[str, StudyPreset] = {
    p.name: p
    for p in (
        StudyPreset(
            "smoke",
            "all placements plus zaremba at a second rate, 2 seeds, tiny models on a small synthetic corpus: "
            "under a minute, for tests",
            (_SMOKE,), seeds=2, placements=_rated(0.25) + ("zaremba:p=0.5",), short_lag=2, long_lag=5,
        ),
        StudyPreset(
            "default",
            "all eight placements at one drop rate (0.3), 6 seeds, on a synthetic language with copies planted "
            "3, 8 and 20 tokens back, in two regimes: 30k training tokens (regularisation) and 80k (memory)",
            _DEFAULT, seeds=6, placements=_rated(0.3), short_lag=2, long_lag=10,
        ),
        StudyPreset(
            "dose",
            "dose-response: zaremba, naive and variational at drop rates 0.1, 0.3 and 0.5 against none, 6 seeds, "
            "on the default's synthetic language and regimes (shares the default's runs at 0.3)",
            _DEFAULT, seeds=6, placements=_doses(), short_lag=2, long_lag=10,
        ),
        StudyPreset(
            "capacity",
            "dropout against a smaller model: none at hidden sizes 16-128 and zaremba, naive, variational and "
            "zoneout at rates 0.3 and 0.5 at the default's size, 6 seeds, on the default's memory regime "
            "(reuses its runs)",
            (dataclasses.replace(_MEMORY_PLAN, regime="", measure=dataclasses.replace(
                _DEFAULT_MEASURE, measures=("recall",))),),
            seeds=6, placements=(), variants=_capacity_variants(),
        ),
        StudyPreset(
            "shakespeare",
            "all eight placements at 0.3, 6 seeds, on Tiny Shakespeare (characters; its file must be found): 2 x 192 "
            "units, 30k training characters, 25 epochs at a constant rate, measured on natural text (context perturbation, "
            "natural copies); about 43 min on 2 CPU cores; its memory half needs larger models than a CPU trains "
            "(docs/regime.md)",
            (_SHAKESPEARE,), seeds=6, placements=_rated(0.3), short_lag=2, long_lag=10,
        ),
        StudyPreset(
            "ptb",
            "all eight placements at 0.3, 6 seeds, on Penn Treebank words (canonical split where ptb.train.txt is "
            "found, else the declared substitute: PTB valid as training text): 70k training words, 12 epochs at a "
            "constant rate, measured on natural text (context perturbation, natural copies); about 50 min on 2 CPU "
            "cores; with the rate annealed none stops overfitting, so a regime that answers both halves needs a larger "
            "model on a GPU (docs/regime.md)",
            (_PTB,), seeds=6, placements=_rated(0.3), short_lag=2, long_lag=10,
        ),
        StudyPreset(
            "paper",
            "Zaremba et al.'s medium model on PTB, every placement at its papers' rates, 6 seeds: meant for a GPU",
            (
                CorpusPlan(
                    "ptb",
                    {},
                    MeasureConfig(max_lag=100, max_tokens=100_000, context_lengths=(1, 2, 5, 10, 20, 50, 100, 200)),
                    base="medium",
                ),
            ),
            seeds=6, short_lag=10, long_lag=50,
        ),
    )
}


