"""Training with Zaremba et al.'s protocol: ``train(RunConfig) -> RunResult``.

By default (and in the small/medium/large presets) plain SGD, learning rate
held for ``decay_after`` epochs and then divided by ``lr_decay`` every epoch
(``schedule="fixed"``), gradient norm clipped, hidden state carried across
BPTT windows (detached) and reset at each epoch start, evaluation with
carried state and no dropout. ``optimizer="adam"`` uses torch's Adam instead;
``schedule="plateau"`` divides the learning rate by ``lr_decay`` after every
epoch whose validation loss did not improve on the best so far (as
pytorch/examples' word_language_model does). ``select`` picks the epoch whose
model the run reports and returns: the one with the lowest validation
perplexity (``"best"``, the default) or the last (``"final"``); the final
epoch's perplexities are reported beside it either way.

A run is a pure function of its configuration: its folder (keyed by a hash
of the configuration) holds the configuration, per-epoch metrics and a
checkpoint after every epoch (weights, optimizer state, RNG states and the
best epoch's weights) from which it resumes to bit-identical results. A loss
that turns NaN or infinite ends the run with status ``diverged`` instead of
an exception.

    python -m probe.train --corpus tinyshakespeare --placement variational --preset tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .corpus import Corpus, batchify, bptt_windows
from .datasets import corpus_fingerprint, load_corpus
from .model import LanguageModel, ModelConfig, detach_state
from .placements import parse_placement
from .preflight import check_backend, check_device, check_device_name, check_folder
from .run_folder import CHECKPOINT, METRICS, RESULT, RunFolder
from kernels.layer import BACKENDS

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("fixed", "plateau")
SELECTIONS = ("best", "final")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's result (the hash of this is its identity)."""

    corpus: str = "synthetic"
    split: str = "canonical"
    placement: str = "zaremba"
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
    forget_bias: float = 0.0  # added to the forget-gate biases after init (probe.model.ModelConfig)

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
        for name, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("select", SELECTIONS),
                            ("backend", BACKENDS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        check_device_name(self.device)
        # Stored in canonical form (every rate explicit), so two spellings of one placement
        # (zaremba, zaremba:p=0.5) are one configuration and one run id.
        object.__setattr__(self, "placement", parse_placement(self.placement).spec)

    def lr_at(self, epoch: int) -> float:
        """The fixed schedule's learning rate of 1-based ``epoch``: held, then divided by lr_decay per epoch.

        (Whatever ``schedule`` is; ``learning_rates`` gives a run's actual ones.)
        """
        return self.lr / self.lr_decay ** max(0, epoch - self.decay_after)

    def run_id(self) -> str:
        """A stable hash of the full configuration: the run folder's name.

        ``corpus`` is the string as typed; for the user's own text files
        (probe.textcorpus) their sha256 (``corpus_sha256``) is hashed in too, so
        a run is never reused after a file's content changes. Registry and
        synthetic corpora are fixed by their names and hash as the config alone.
        """
        fields = dataclasses.asdict(self)
        corpus_sha256 = self.corpus_sha256()
        if corpus_sha256 is not None:
            fields["corpus_sha256"] = corpus_sha256
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def corpus_sha256(self) -> str | None:
        """The sha256 of a text-file corpus's files (None for registry and synthetic corpora)."""
        return corpus_fingerprint(self.corpus)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            vocab_size=vocab_size,
            emb_size=self.emb_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            tie_weights=self.tie_weights,
            init_scale=self.init_scale,
            placement=self.placement,
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


@dataclass
class RunResult:
    """What a finished (or diverged) run reports."""

    config: RunConfig
    status: str  # "finished" or "diverged"
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
            names = {f.name for f in dataclasses.fields(cls)} - {"config", "model"}
            return cls(config=config, **{k: v for k, v in d.items() if k in names})
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a result.json of this version ({type(e).__name__}: {e})") from None


# --- evaluation -----------------------------------------------------------


@torch.no_grad()
def evaluate(model: LanguageModel, data: torch.Tensor, bptt: int) -> float:
    """Mean NLL (nats/token) over batchified ``data`` with carried state and no dropout."""
    was_training = model.training
    model.eval()
    state = model.init_state(data.shape[1])
    total, count = 0.0, 0
    for x, y in bptt_windows(data, bptt):
        logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    return total / count


# --- checkpoints ----------------------------------------------------------


def _rng_states(mask_gen: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "mask_generator": mask_gen.get_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_states(states: dict, mask_gen: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    mask_gen.set_state(states["mask_generator"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])


def _save_checkpoint(
    folder: RunFolder, model, mask_gen, optimizer, best: dict, epoch: int, epochs: list[dict], config: RunConfig
) -> None:
    """``best``: ``{"epoch", "model"}``, the best epoch's state_dict; when that is this
    epoch the model's own tensors are passed, which torch.save stores only once."""
    model_state = model.state_dict()
    best_state = model_state if best["epoch"] == epoch else best["model"]
    buf = io.BytesIO()
    torch.save(
        {
            "config": dataclasses.asdict(config),
            "epoch": epoch,
            "epochs": epochs,
            "model": model_state,
            "best": {"epoch": best["epoch"], "model": best_state},
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "rng": _rng_states(mask_gen),
        },
        buf,
    )
    folder.files.write(CHECKPOINT, buf.getvalue())


def _clone_state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _make_optimizer(config: RunConfig, model):
    """None for plain SGD (updated by hand in ``_train_epoch``), else a torch optimizer."""
    if config.optimizer == "adam":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    return None


# --- training -------------------------------------------------------------


def _setup(config: RunConfig, corpus: Corpus):
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} requested but CUDA is not available; use --device cpu")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model = LanguageModel(config.model_config(len(corpus.vocab))).to(device=device, dtype=DTYPES[config.dtype])
    mask_gen = torch.Generator(device=device)
    mask_gen.manual_seed(config.seed + 1)
    return model, mask_gen, device


def train(
    config: RunConfig,
    run_dir: str | Path | None = None,
    *,
    corpus: Corpus | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    stop_after_epoch: int | None = None,
    log: Callable[[dict], None] | None = None,
) -> RunResult:
    """Train (or resume) one run; returns its result with the selected epoch's model.

    ``run_dir``: where config, metrics and checkpoint live (probe.run_folder);
    a run found there with the same configuration resumes after its last
    finished epoch (a finished one only re-evaluates its selected and final
    models). The folder is locked while this runs, and every file in it is
    verified first: a damaged one is moved aside and recomputed (a damaged
    checkpoint restarts the run from scratch). ``stop_after_epoch`` ends the
    call early (as an interruption would), for tests of resumption. ``log``:
    called with each epoch's metrics dict as the epoch ends (first with those
    of epochs restored from a checkpoint).
    """
    if corpus is None:
        corpus = load_corpus(config.corpus, data_dir, split=config.split)
    if run_dir is None:
        return _train(config, None, corpus, progress, stop_after_epoch, log)
    folder = RunFolder(run_dir)
    with folder.locked():
        return _train(config, folder, corpus, progress, stop_after_epoch, log)


def _open_folder(folder: RunFolder, config: RunConfig, device) -> dict | None:
    """Verify the folder, check it is this configuration's, record the config; return its checkpoint (or None)."""
    folder.files.clean_temporary()
    folder.files.verify_all(repair=True)
    foreign = folder.foreign_config(config)
    if foreign is not None:
        raise ValueError(foreign)
    folder.write_config(config)
    blob = folder.files.read(CHECKPOINT, repair=True)
    if blob is None:
        return None
    try:
        return torch.load(io.BytesIO(blob), map_location=device, weights_only=False)
    except Exception as e:  # the recorded bytes, yet unreadable here (another torch version?): start afresh
        folder.files.move_aside(CHECKPOINT, f"cannot be loaded ({type(e).__name__}: {str(e)[:100]})")
        return None


def _train(config: RunConfig, folder: RunFolder | None, corpus: Corpus, progress: bool,
           stop_after_epoch: int | None, log) -> RunResult:
    model, mask_gen, device = _setup(config, corpus)
    train_ids = corpus.train if config.train_tokens is None else corpus.train[: config.train_tokens]
    train_data = batchify(train_ids, config.batch_size).to(device)
    valid_data = batchify(corpus.valid, config.batch_size).to(device)
    test_data = batchify(corpus.test, config.batch_size).to(device)

    optimizer = _make_optimizer(config, model)
    run_dir = str(folder.path) if folder is not None else None
    epochs: list[dict] = []
    best: dict = {"epoch": None, "model": None}  # the best epoch so far and its state_dict
    start_epoch = 1
    ckpt = _open_folder(folder, config, device) if folder is not None else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if optimizer is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_states(ckpt["rng"], mask_gen)
        epochs = ckpt["epochs"]
        best = ckpt["best"]
        start_epoch = ckpt["epoch"] + 1
    if log is not None:
        for e in epochs:
            log(e)

    status = "finished"
    t_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        if stop_after_epoch is not None and epoch > stop_after_epoch:
            return RunResult(config, "interrupted", epochs, best_epoch=best["epoch"], run_dir=run_dir, model=model)
        lr = learning_rates(config, [e["valid_ppl"] for e in epochs])[epoch - 1]
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        t0 = time.perf_counter()
        train_nll = _train_epoch(model, train_data, config, lr, optimizer, mask_gen, progress, epoch)
        seconds = time.perf_counter() - t0
        # NaN/inf, or a loss so large its perplexity overflows (math.exp would raise).
        if not math.isfinite(_ppl(train_nll)):
            status = "diverged"
            epochs.append({"epoch": epoch, "lr": lr, "train_ppl": math.inf, "valid_ppl": math.nan, "seconds": seconds})
            if log is not None:
                log(epochs[-1])
            break
        valid_nll = evaluate(model, valid_data, config.bptt)
        if not math.isfinite(valid_nll):  # weights turned NaN/inf on the epoch's last updates
            status = "diverged"
        epochs.append(
            {
                "epoch": epoch,
                "lr": lr,
                "train_ppl": math.exp(train_nll),
                "valid_ppl": _ppl(valid_nll),
                "seconds": seconds,
                "words_per_sec": train_data.numel() / seconds,
            }
        )
        if log is not None:
            log(epochs[-1])
        if status == "diverged":
            break
        if best_epoch(epochs) == epoch:
            best = {"epoch": epoch, "model": _clone_state(model)}
        if folder is not None:
            _save_checkpoint(folder, model, mask_gen, optimizer, best, epoch, epochs, config)
            folder.files.write_json(METRICS, epochs)

    result = RunResult(config, status, epochs, best_epoch=best["epoch"], run_dir=run_dir, model=model)
    result.seconds = sum(e["seconds"] for e in epochs)
    if status == "finished":
        final = epochs[-1]["epoch"]
        result.final_valid_ppl = epochs[-1]["valid_ppl"]
        result.final_test_ppl = _ppl(evaluate(model, test_data, config.bptt))
        result.selected_epoch = selected_epoch(config, epochs)
        if result.selected_epoch == final:
            result.valid_ppl, result.test_ppl = result.final_valid_ppl, result.final_test_ppl
        else:  # the best epoch's weights replace the final ones in the returned model
            model.load_state_dict(best["model"])
            result.valid_ppl = epochs[result.selected_epoch - 1]["valid_ppl"]
            result.test_ppl = _ppl(evaluate(model, test_data, config.bptt))
    result.wall_seconds = time.perf_counter() - t_start
    if folder is not None:
        folder.files.write_json(METRICS, epochs)  # rewritten, in case it was the file found damaged
        folder.files.write_json(RESULT, result.to_json())
    return result


def _ppl(nll: float) -> float:
    return math.exp(nll) if nll < 700 else math.inf


def _train_epoch(model, data, config: RunConfig, lr: float, optimizer, mask_gen, progress: bool, epoch: int) -> float:
    """One pass over the training stream; returns the mean NLL (nan or inf if it diverged)."""
    model.train()
    state = model.init_state(data.shape[1])
    params = [p for p in model.parameters() if p.requires_grad]
    total, count = 0.0, 0
    n_windows = math.ceil((data.shape[0] - 1) / config.bptt)
    bar = tqdm(
        bptt_windows(data, config.bptt), total=n_windows, disable=not progress,
        desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False, file=sys.stderr,
    )
    for x, y in bar:
        state = detach_state(state)
        logits, state = model(x, state, generator=mask_gen)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        if not torch.isfinite(loss):
            return math.nan
        model.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip)
        if optimizer is not None:
            optimizer.step()  # its param_groups' lr is set to ``lr`` by the caller
        else:
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-lr)
        total += loss.item() * y.numel()
        count += y.numel()
        if progress:
            bar.set_postfix(ppl=f"{math.exp(min(total / count, 700)):.1f}", refresh=False)
    return total / count


# --- command line ---------------------------------------------------------


def default_runs_dir() -> Path:
    return Path(os.environ.get("DROPOUT_PROBE_RUNS", "runs"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m probe.train",
        description="Train one LSTM language model under a dropout placement (Zaremba et al.'s protocol).",
    )
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="starting configuration: Zaremba's small/medium/large, or tiny for tests (default tiny)")
    p.add_argument("--corpus", help="synthetic (default), ptb, ptb-char, wikitext-2, tinyshakespeare, "
                   "a synthetic spec such as synthetic:lags=5+20,cue=0.2, or your own UTF-8 text: a file "
                   "PATH.txt (word level, cut in order 90/5/5 into train/valid/test), a folder PATH/ holding "
                   "train.txt, valid.txt and test.txt, or with options text,level=char,valid=0.1,test=0.1:PATH "
                   "(level=word|char; everything after the first ':' is the path; vocabulary from the "
                   "training text, unseen tokens become <unk>; see probe.textcorpus)")
    p.add_argument("--split", choices=["canonical", "substitute"],
                   help="'substitute' uses a corpus's valid file as training text where the train file is absent")
    p.add_argument("--placement", help="placement spec, e.g. variational:p=0.5,rec=0.3 (see probe.placements)")
    help_text = {
        "num_layers": "LSTM layers", "hidden_size": "units per layer", "emb_size": "embedding size",
        "batch_size": "parallel streams", "bptt": "BPTT window length",
        "lr": "initial learning rate (of SGD or Adam; Adam wants about 1e-3)",
        "lr_decay": "divide the learning rate by this: every epoch after --decay-after (fixed schedule), "
                    "or after every epoch that did not improve validation loss (plateau schedule)",
        "decay_after": "epochs at the initial learning rate (fixed schedule only)", "epochs": "training epochs",
        "clip": "max gradient norm", "init_scale": "uniform(-s, s) initialisation", "seed": "random seed",
        "device": "cpu or cuda", "dtype": "float32, float64 or bfloat16",
        "backend": "recurrence backend: auto, reference or triton",
        "train_tokens": "train on only the first N training tokens",
        "forget_bias": "added to every forget-gate bias after the uniform init (0: Zaremba; 1: Jozefowicz et al. 2015)",
        "optimizer": "sgd (plain p -= lr * grad, the default) or adam (torch.optim.Adam, default betas)",
        "schedule": "fixed (Zaremba's: hold, then decay every epoch; the default) or plateau (decay after "
                    "every epoch whose validation loss did not improve on the best so far)",
        "select": "which epoch's model the run reports and keeps: best (lowest validation perplexity, the "
                  "default) or final (the last epoch); the final epoch's perplexities are reported either way",
    }
    for f in dataclasses.fields(RunConfig):
        if f.name in ("corpus", "split", "placement", "tie_weights"):
            continue
        kind = int if f.name == "train_tokens" else type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), type=kind, help=help_text.get(f.name))
    p.add_argument("--tie-weights", action="store_true", default=None, help="share embedding and decoder weights")
    p.add_argument("--data-dir", help="corpora folder (else $DROPOUT_PROBE_DATA, else the user cache)")
    p.add_argument("--download", action="store_true", help="download missing corpus files (checksummed)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where run folders go (default $DROPOUT_PROBE_RUNS or ./runs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> RunConfig:
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RunConfig)
        if getattr(args, f.name, None) is not None
    }
    return preset(args.preset, **overrides)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        check_device(config.device)
        check_backend(config.backend, config.device)
        corpus = load_corpus(config.corpus, args.data_dir, split=config.split, download=args.download)
        check_corpus_fits(corpus, config)
        runs_dir = check_folder(args.runs_dir or default_runs_dir(), "--runs-dir")  # created last: no litter
    except ValueError as e:  # CorpusError, PlacementError and PreflightError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = runs_dir / config.run_id()
    print(f"run {config.run_id()} -> {run_dir}\ncorpus: {corpus.label}: {corpus.split_note}", file=sys.stderr)
    if _finished(run_dir, config):
        print(f"reusing the finished run in {run_dir} (same configuration; delete the folder to train again)",
              file=sys.stderr)
    try:
        result = train(config, run_dir, corpus=corpus, progress=not args.no_progress, log=_print_epoch)
    except (OSError, ValueError, RuntimeError) as e:  # a full disk, a folder made read-only, a foreign folder
        print(f"error: run {config.run_id()} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              file=sys.stderr)
        return 1
    print(_summary_line(result, run_dir))
    return 0 if result.status == "finished" else 1


def check_corpus_fits(corpus: Corpus, config: RunConfig) -> None:
    """A one-line ValueError, before any training, when a split is too short to batch."""
    need = 2 * config.batch_size
    for split in ("train", "valid", "test"):
        n = getattr(corpus, split).numel()
        if split == "train" and config.train_tokens is not None:
            n = min(n, config.train_tokens)
        if n < need:
            raise ValueError(
                f"corpus {corpus.label}: its {split} split has {n} tokens but batch size {config.batch_size} needs "
                f"at least {need}; use a longer text or a smaller --batch-size"
            )


def _finished(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` already holds this configuration's finished run (train() then only reloads it)."""
    try:
        saved = RunFolder(run_dir).files.read_json(RESULT)  # verified, read-only
    except (OSError, ValueError):
        return False
    return saved is not None and saved.get("run_id") == config.run_id() and saved.get("status") == "finished"


def _print_epoch(e: dict) -> None:
    speed = f"  {e['words_per_sec']:.0f} words/s" if "words_per_sec" in e else ""
    print(f"epoch {e['epoch']:3d}  lr {e['lr']:.4g}  train ppl {e['train_ppl']:.2f}  valid ppl {e['valid_ppl']:.2f}"
          f"{speed}", file=sys.stderr, flush=True)


def _summary_line(result: RunResult, run_dir) -> str:
    if result.status != "finished":
        return f"{result.status} after {len(result.epochs)} epochs, run folder {run_dir}"
    final = result.epochs[-1]["epoch"] if result.epochs else None
    line = (f"{result.status}: epoch {result.selected_epoch} selected (--select {result.config.select}; best epoch "
            f"{result.best_epoch} of {final}): valid ppl {result.valid_ppl:.2f}, test ppl {result.test_ppl:.2f}")
    if result.selected_epoch != final:
        line += (f"; final epoch {final}: valid ppl {result.final_valid_ppl:.2f}, "
                 f"test ppl {result.final_test_ppl:.2f}")
    return line + f", run folder {run_dir}"


if __name__ == "__main__":
    raise SystemExit(main())
