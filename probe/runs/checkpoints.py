"""Trained LSTM language models from elsewhere, as the toolkit's ``LanguageModel``: ``load_checkpoint``.

The formats and conversions in full: docs/checkpoints.md."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from probe.data.corpus import SPLITS, Corpus, CorpusError, Vocab
from probe.data.registry import corpus_fingerprint, load_corpus
from probe.runs.manifest import MANIFEST, Manifest
from probe.model.language_model import LanguageModel
from probe.runs.examples_checkpoint import STUB_PICKLE, RefusedGlobal, load_examples
from probe.runs.loaded import SUPPORTED, CheckpointError, Loaded, describe


FORMATS = ("auto", "toolkit", "examples")
# --------------------------------------------------------------------------- entry point


def load_checkpoint(
    path,
    *,
    corpus: str | Corpus | None = None,
    data_dir=None,
    format: str = "auto",
    dropout: float | None = None,
) -> Loaded:
    """The model of checkpoint ``path`` as a ``LanguageModel`` (eval mode), its corpus and a description.

    Only load checkpoints you trust: unpickling can run code (module docstring).

    path: a toolkit run folder, its checkpoint.pt, or a pytorch/examples checkpoint.
    corpus: a toolkit run's corpus by default (a ``load_corpus`` name, or a
        Corpus); for an examples checkpoint, required: its data folder (or a
        Corpus in its vocabulary), whose vocabulary must have as many types as
        the checkpoint's encoder has rows.
    data_dir: the corpora folder (``probe.data.registry.resolve_data_dir``).
    format: "auto" (from the file's contents), "toolkit" or "examples".
    dropout: an examples state dict's dropout rate (a pickled model has its own).
    """
    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; valid formats: {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; {SUPPORTED}")
    if path.is_dir():
        file = path / "checkpoint.pt"
        if not file.is_file():
            raise CheckpointError(f"{path} is a folder without a checkpoint.pt, so not a probe.train run folder; {SUPPORTED}")
        path = file
    _check_recorded(path)
    obj = read_checkpoint(path)
    found = _kind(obj)
    if format == "auto":
        if found is None:
            raise CheckpointError(f"{path} holds {describe(obj)}; {SUPPORTED}")
        format = found
    elif found != format:
        raise CheckpointError(
            f"{path} holds {describe(obj)}, not {'an' if format == 'examples' else 'a'} {format} checkpoint; "
            + (f"try --format {found} (or auto)" if found else SUPPORTED)
        )
    if format == "toolkit":
        return _load_toolkit(obj, path, corpus, data_dir)
    return load_examples(obj, path, corpus, data_dir, dropout)


def _check_recorded(path: Path) -> None:
    """A checkpoint in a run folder with a manifest must be the one recorded there (probe.runs.manifest)."""
    files = Manifest(path.parent)
    entries = files.entries()
    if entries is None:
        raise CheckpointError(f"{path.parent / MANIFEST} is damaged, so {path} cannot be verified; rerun the study "
                              "(or probe.train) on this run to recompute it")
    if path.name in entries and not files.check(path.name):
        raise CheckpointError(f"{path} is damaged: it differs from the checkpoint recorded in {path.parent / MANIFEST}; "
                              "rerun the study (or probe.train) on this run to recompute it")


def read_checkpoint(path: Path):
    """Unpickle ``path`` onto the CPU: weights-only first (runs no code), else with the stub mapping."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as err:  # not a torch file at all
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint ({_first_line(err)}); {SUPPORTED}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SourceChangeWarning of legacy files: the stub's source differs
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=STUB_PICKLE)
    except CheckpointError:
        raise
    except RefusedGlobal as err:
        raise CheckpointError(f"{path} was not loaded: {str(err).splitlines()[0]}; {SUPPORTED}") from None
    except (ModuleNotFoundError, AttributeError, ImportError) as err:
        raise CheckpointError(
            f"{path} pickles a class that cannot be found ({_first_line(err)}); only pytorch/examples' "
            f"model.RNNModel is read without its code: save the model's state_dict() instead; {SUPPORTED}"
        ) from None
    except Exception as err:
        raise CheckpointError(f"{path} cannot be read as a torch checkpoint ({_first_line(err)}); {SUPPORTED}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _kind(obj) -> str | None:
    """"toolkit", "examples" or None (something else) for an unpickled checkpoint."""
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        return "toolkit"
    if isinstance(obj, nn.Module):
        return "examples"
    prefixes = tuple(f"{m}{k}." for m in ("", "module.") for k in ("encoder", "rnn", "decoder"))
    if isinstance(obj, dict) and any(isinstance(k, str) and k.startswith(prefixes) for k in obj):
        return "examples"
    return None


# --------------------------------------------------------------------------- toolkit runs


def _load_toolkit(ckpt: dict, path: Path, corpus, data_dir) -> Loaded:
    from probe.runs.config import DTYPES, RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    saved = ckpt["config"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its 'config' is {describe(saved)}, not a RunConfig's fields")
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise CheckpointError(f"{path}: its config has fields this toolkit does not know ({', '.join(unknown)}); "
                              "was it written by a newer version?")
    try:
        config = RunConfig(**saved)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its config is not a valid RunConfig ({_first_line(err)})") from None
    best = ckpt.get("best") or {}
    if config.select == "best" and best.get("model") is not None:
        state, epoch, which = best["model"], best.get("epoch"), "the best-validation epoch's weights"
    else:
        state, epoch, which = ckpt["model"], ckpt.get("epoch"), "the last epoch's weights"
    if "embedding.weight" not in state:
        raise CheckpointError(f"{path}: its model state has no embedding.weight ({describe(state)})")
    V = state["embedding.weight"].shape[0]
    backend = config.backend
    if backend == "triton" and not torch.cuda.is_available():
        backend = "auto"
    model_config = dataclasses.replace(config.model_config(V), backend=backend)
    model = LanguageModel(model_config).to(dtype=DTYPES[config.dtype])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit its RunConfig ({_first_line(err)})") from None
    model.eval()

    run_dir = path.parent
    _check_fingerprint(run_dir, config, path)
    own = None
    notes = ""
    if corpus is None or isinstance(corpus, str) and corpus == config.corpus:
        own = load_corpus(config.corpus, data_dir, split=config.split)
        data = own
    else:
        data = corpus if isinstance(corpus, Corpus) else load_corpus(corpus, data_dir)
        try:
            own = load_corpus(config.corpus, data_dir, split=config.split)
        except (CorpusError, ValueError):
            own = None
        if own is not None and own.vocab != data.vocab:
            data = reencode(data, own.vocab)
            notes = f" Measured on {data.name}, re-encoded in the run's vocabulary (from {config.corpus})."
        elif own is None:
            notes = (f" Measured on {data.name}; the run's own corpus {config.corpus} could not be loaded, so its "
                     "ids are assumed to be the run's.")
    if len(data.vocab) != V:
        raise CheckpointError(
            f"{path}: the run's model has a vocabulary of {V} but corpus {data.name} has {len(data.vocab)} types"
        )
    reported = {}
    try:
        result = json.loads((run_dir / "result.json").read_text())
        reported = {k: result[k] for k in ("status", "valid_ppl", "test_ppl", "selected_epoch") if k in result}
    except (OSError, ValueError):
        pass
    try:
        run_id = config.run_id()
    except (CorpusError, ValueError, OSError):
        run_id = hashlib.sha256(json.dumps(saved, sort_keys=True).encode()).hexdigest()[:16]
    epochs = len(ckpt.get("epochs", []))
    done = f"{epochs} of {config.epochs} epochs" if epochs != config.epochs else f"{epochs} epochs"
    description = (
        f"probe.train run {run_id} ({path}): {config.num_layers} x {config.hidden_size} LSTM, embedding "
        f"{config.emb_size}{', tied weights' if config.tie_weights else ''}, placement "
        f"{config.placement}, {config.optimizer} for {done} on {config.corpus}; "
        f"{which}{f' (epoch {epoch})' if epoch is not None else ''}"
        + (f"; the run reported test perplexity {reported['test_ppl']:.4g}" if isinstance(reported.get("test_ppl"), (int, float)) else "")
        + "." + notes
    )
    return Loaded(model, data, "toolkit", description, path, placement_known=True,
                  eval_batch_size=config.batch_size, run_id=run_id, reported=reported)


def _check_fingerprint(run_dir: Path, config, path: Path) -> None:
    """A text corpus whose files changed since the run was trained is an error (its vocabulary would differ)."""
    try:
        saved = json.loads((run_dir / "config.json").read_text()).get("corpus_sha256")
    except (OSError, ValueError, AttributeError):
        return
    if saved is None:
        return
    try:
        now = corpus_fingerprint(config.corpus)
    except (CorpusError, OSError):
        return  # unreadable now: loading the corpus says why
    if now is not None and now != saved:
        raise CheckpointError(
            f"{path}: the corpus files {config.corpus!r} changed since the run was trained (sha256 {saved[:12]}... "
            f"then, {now[:12]}... now); pass the text it was trained on"
        )


def reencode(corpus: Corpus, vocab: Vocab) -> Corpus:
    """``corpus``'s text as ids of ``vocab`` (tokens outside it become its <unk>, or a CorpusError)."""
    splits = {s: vocab.encode(corpus.vocab.decode(getattr(corpus, s))) for s in SPLITS}
    return dataclasses.replace(
        corpus, vocab=vocab, **splits,
        split_note=corpus.split_note + "; re-encoded in the model's vocabulary",
    )
