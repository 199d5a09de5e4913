"""Trained LSTM language models from elsewhere, as the toolkit's ``LanguageModel``: ``load_checkpoint``.

    from probe.checkpoints import load_checkpoint
    loaded = load_checkpoint("runs/3f2a.../", data_dir="data")              # one of this toolkit's runs
    loaded = load_checkpoint("model.pt", corpus="data/wikitext-2")          # pytorch/examples' main.py --save

Only load checkpoints you trust. A checkpoint is a pickle, and unpickling
can run arbitrary code: the loader first tries ``torch.load(weights_only=True)``
(which cannot), but a whole pickled model (``torch.save(model)``) and a
toolkit run's checkpoint need the full unpickler.

Formats
-------
``toolkit``
    A ``probe.train`` run folder, or its ``checkpoint.pt``: a dict with
    ``config`` (the RunConfig's fields), ``model`` (the last epoch's weights)
    and ``best`` (``{"epoch", "model"}``). The model is rebuilt from the
    RunConfig's ``model_config``; the weights are those the run reports:
    the best epoch's (``select="best"``, the default) where present, else the
    last epoch's (``select="final"``, or a run with no best epoch yet). The
    corpus is the RunConfig's, unless one is given; a given corpus is
    re-encoded in the run's vocabulary where the two differ.
``examples``
    pytorch/examples' word_language_model with ``--model LSTM``: its
    ``RNNModel`` (``encoder`` nn.Embedding, ``drop`` nn.Dropout, ``rnn``
    nn.LSTM, ``decoder`` nn.Linear), saved whole with ``torch.save(model)``
    (what its main.py does) or as a state dict (``encoder.weight``,
    ``rnn.weight_ih_l0``, ..., ``decoder.weight``, ``decoder.bias``). A whole
    model is unpickled without importing the user's code: the class
    ``model.RNNModel`` (and any class of a module named ``model``, ending in
    ``.model`` or ``__main__``) is mapped to a stub ``nn.Module`` here, and
    ``nn.Module``'s pickling restores its submodules and weights.

    Conversion (the same function, to float rounding): embedding =
    ``encoder.weight``; layer k's ``w_ih``/``w_hh`` = ``weight_ih_lk``/
    ``weight_hh_lk`` and its one bias = ``bias_ih_lk + bias_hh_lk`` (both
    use nn.LSTM's gate order i, f, g, o); decoder copied; tied weights when
    ``decoder.weight`` is (or equals) ``encoder.weight``; sizes from the
    weights. examples' dropout acts on the embedding output, between LSTM
    layers (nn.LSTM's ``dropout``) and on the top output, a fresh mask at
    every step: Zaremba et al.'s sites, so the placement is
    ``zaremba:p=<drop.p>``. A state dict holds no dropout rate: pass
    ``dropout=`` (``--dropout``), or the model gets placement ``none`` and
    ``Loaded.placement_known`` is False (measure it in evaluation mode only).

    examples saves no vocabulary. ``examples_corpus(folder)`` rebuilds it as
    its data.py does, from the data folder it was trained on; ``corpus=``
    names that folder (or a registry name whose folder under the data
    folder holds train.txt, valid.txt and test.txt, as wikitext-2's does).

Anything else (a GRU, RNN_TANH or Transformer model, missing keys, shapes
that do not fit) is a one-line ``CheckpointError`` naming what was found and
what is supported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pickle
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from probe.corpus import EOS, SPLITS, Corpus, CorpusError, Vocab
from probe.datasets import DATASETS, corpus_fingerprint, load_corpus, resolve_data_dir
from probe.files import file_sha256
from probe.manifest import MANIFEST, Manifest
from probe.model import LanguageModel, ModelConfig
from probe.placements import parse_placement

FORMATS = ("auto", "toolkit", "examples")
SUPPORTED = (
    "supported: a probe.train run folder or its checkpoint.pt, or a pytorch/examples word_language_model LSTM "
    "(its RNNModel saved with torch.save(model), or its state_dict)"
)
EXAMPLES_EVAL_BATCH = 10  # examples' main.py: eval_batch_size = 10
_STUB_MODULES = ("model", "__main__")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the one-line message says what was found and what works."""


@dataclass(frozen=True)
class Loaded:
    """A checkpoint as the toolkit's model, with the corpus it is measured on and what it is, in words."""

    model: LanguageModel  # in evaluation mode, on the CPU
    corpus: Corpus  # ids in the model's vocabulary
    format: str  # "toolkit" or "examples"
    description: str  # one paragraph for reports: what was loaded and how it was converted
    path: Path  # the file read
    placement_known: bool = True  # False: an examples state dict with no dropout rate given
    eval_batch_size: int = EXAMPLES_EVAL_BATCH  # streams for perplexity: the training script's own
    run_id: str = ""  # the toolkit run's id, or the first 16 hex digits of the file's sha256
    reported: dict = dataclasses.field(default_factory=dict)  # what the run reported (toolkit: result.json)

    @property
    def vocab(self) -> Vocab:
        return self.corpus.vocab


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
    data_dir: the corpora folder (``probe.datasets.resolve_data_dir``).
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
            raise CheckpointError(f"{path} holds {_describe(obj)}; {SUPPORTED}")
        format = found
    elif found != format:
        raise CheckpointError(
            f"{path} holds {_describe(obj)}, not {'an' if format == 'examples' else 'a'} {format} checkpoint; "
            + (f"try --format {found} (or auto)" if found else SUPPORTED)
        )
    if format == "toolkit":
        return _load_toolkit(obj, path, corpus, data_dir)
    return _load_examples(obj, path, corpus, data_dir, dropout)


def _check_recorded(path: Path) -> None:
    """A checkpoint in a run folder with a manifest must be the one recorded there (probe.manifest)."""
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
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_STUB_PICKLE)
    except CheckpointError:
        raise
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


def _describe(obj) -> str:
    """What an unpickled checkpoint is, in a few words, for error messages."""
    if isinstance(obj, nn.Module):
        return f"a pickled {getattr(type(obj), 'pickled_as', type(obj).__qualname__)} model"
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        head = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        return f"a dict with keys {head or '(none)'}"
    return f"a {type(obj).__name__}"


# --------------------------------------------------------------------------- unpickling examples' model


class ExamplesModelStub(nn.Module):
    """Stands in for a class of pytorch/examples' model.py while unpickling; its code is never imported.

    ``nn.Module``'s pickling restores the instance's ``__dict__`` (its
    submodules ``encoder``, ``rnn``, ``decoder``, ``drop`` and attributes such
    as ``rnn_type``), which is all the conversion reads. ``pickled_as`` holds
    the class name in the file.
    """

    pickled_as = "model.RNNModel"

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"a stub of {self.pickled_as} cannot run; convert it with probe.checkpoints")


_STUBS: dict[str, type] = {}


def _stub(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STUBS:
        _STUBS[key] = type(name, (ExamplesModelStub,), {"pickled_as": key, "__module__": __name__})
    return _STUBS[key]


def _is_stub_module(module: str) -> bool:
    return module in _STUB_MODULES or module.endswith(".model")


class StubUnpickler(pickle.Unpickler):
    """Maps examples' model classes (module ``model``, ``*.model`` or ``__main__``) to stubs; else as pickle."""

    def find_class(self, module, name):
        if _is_stub_module(module):
            return _stub(module, name)
        return super().find_class(module, name)


def _stub_load(file, **kwargs):
    return StubUnpickler(file, **kwargs).load()


_STUB_PICKLE = types.ModuleType("probe_checkpoints_pickle")
_STUB_PICKLE.Unpickler = StubUnpickler
_STUB_PICKLE.load = _stub_load
_STUB_PICKLE.loads = pickle.loads
_STUB_PICKLE.UnpicklingError = pickle.UnpicklingError


# --------------------------------------------------------------------------- examples: vocabulary


def examples_corpus(folder) -> Corpus:
    """The corpus and vocabulary pytorch/examples' data.py builds from ``folder``.

    One Dictionary over train.txt, valid.txt and test.txt, in that order: for
    each line (read as UTF-8 text), ``line.split() + ['<eos>']``, words in
    order of first appearance; each split's ids accordingly.
    """
    folder = Path(folder).expanduser()
    files = {s: folder / f"{s}.txt" for s in SPLITS}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise CorpusError(
            f"{folder} is not a pytorch/examples data folder: it lacks {', '.join(missing)} "
            "(examples' data.py reads train.txt, valid.txt and test.txt)"
        )
    tokens = {}
    for split, path in files.items():
        try:
            with open(path, "r", encoding="utf8") as f:  # as data.py reads it: universal newlines
                tokens[split] = [w for line in f for w in line.split() + [EOS]]
        except UnicodeDecodeError as err:
            raise CorpusError(f"{path} is not UTF-8 (byte {err.start}: {err.reason})") from None
    vocab = Vocab.build(tokens["train"], tokens["valid"], tokens["test"])
    sources = {str(p): file_sha256(p) for p in files.values()}
    sizes = ", ".join(f"{s} {len(tokens[s])}" for s in SPLITS)
    shas = ", ".join(f"{p.name} sha256 {sources[str(p)]}" for p in files.values())
    note = (
        f"pytorch/examples word_language_model data folder {folder}: train.txt, valid.txt, test.txt; vocabulary "
        f"rebuilt as its data.py does (one Dictionary over train, valid and test in that order, each line's "
        f"whitespace tokens plus <eos>, words in order of first appearance): {len(vocab)} types; tokens {sizes}; "
        f"{shas}"
    )
    return Corpus(
        name=folder.resolve().name or str(folder), level="word", vocab=vocab,
        **{s: vocab.encode(tokens[s]) for s in SPLITS},
        split="canonical", split_note=note, files={s: str(p) for s, p in files.items()}, sources=sources,
    )


def _examples_folder(corpus: str, data_dir) -> Path:
    text = corpus[len("text:"):] if corpus.startswith("text:") else corpus
    if Path(text).expanduser().is_dir():
        return Path(text).expanduser()
    if corpus in DATASETS:
        folder = resolve_data_dir(data_dir) / corpus
        if all((folder / f"{s}.txt").is_file() for s in SPLITS):
            return folder
        raise CheckpointError(
            f"an examples checkpoint needs the data folder it was trained on, with train.txt, valid.txt and "
            f"test.txt; {folder} (corpus {corpus!r} in the data folder) has no such files"
        )
    raise CheckpointError(
        f"an examples checkpoint needs --corpus FOLDER, the data folder it was trained on (train.txt, valid.txt, "
        f"test.txt); {corpus!r} is not a folder"
    )


# --------------------------------------------------------------------------- examples: conversion


def _load_examples(obj, path: Path, corpus, data_dir, dropout: float | None) -> Loaded:
    how = "a state dict"
    p_between = None
    if isinstance(obj, nn.Module):
        state, p_pickled, p_between, what = _examples_module(obj, path)
        how = f"a pickled {what}"
        if dropout is not None and p_pickled is not None and not math.isclose(dropout, p_pickled):
            raise CheckpointError(
                f"{path}: --dropout {dropout:g} given but the pickled model's own dropout is {p_pickled:g}; "
                "leave --dropout out for a pickled model"
            )
        dropout = p_pickled
    else:
        state = obj
    converted, sizes = convert_examples_state(state, path)
    V, E, H, L, tied = sizes
    known = dropout is not None
    if known and not 0 <= dropout < 1:
        raise CheckpointError(f"{path}: dropout must be in [0, 1); got {dropout!r}")
    placement = "none" if not known or dropout == 0 else parse_placement(f"zaremba:p={dropout:g}").spec
    dtype = converted["embedding.weight"].dtype
    config = ModelConfig(vocab_size=V, emb_size=E, hidden_size=H, num_layers=L, tie_weights=tied,
                         placement=placement)
    model = LanguageModel(config).to(dtype=dtype)
    model.load_state_dict(converted)
    model.eval()

    if corpus is None:
        raise CheckpointError(
            f"{path} is a pytorch/examples checkpoint, which saves no vocabulary: pass --corpus FOLDER, the data "
            "folder it was trained on (train.txt, valid.txt, test.txt), to rebuild it as examples' data.py does"
        )
    data = corpus if isinstance(corpus, Corpus) else examples_corpus(_examples_folder(corpus, data_dir))
    if len(data.vocab) != V:
        raise CheckpointError(
            f"{path}: the checkpoint's encoder has {V} rows but the vocabulary rebuilt from {data.name} has "
            f"{len(data.vocab)} types; pass the data folder the model was trained on"
        )
    if not known:
        rate = "its dropout rate is not saved in a state dict (pass --dropout P), so it is measured with no dropout placement (evaluation mode only)"
    elif dropout == 0:
        rate = "dropout 0, so placement none"
    else:
        rate = (f"dropout {dropout:g} on the embedding output, between the LSTM layers and on the top output, a "
                f"fresh mask every step: Zaremba et al.'s sites, placement {placement}")
        if p_between is not None and L > 1 and not math.isclose(p_between, dropout):
            rate += (f" (its nn.LSTM drops {p_between:g} between layers, not {dropout:g}; the placement uses "
                     f"{dropout:g} at every site)")
    description = (
        f"pytorch/examples word_language_model LSTM, {how} ({path}): {L} layer{'s' if L > 1 else ''} x {H} units, "
        f"embedding {E}, vocabulary {V}{', tied weights' if tied else ''}; {rate}. Converted to the toolkit's "
        f"model: embedding = encoder.weight, each layer's w_ih and w_hh = weight_ih_lk and weight_hh_lk, its bias "
        f"= bias_ih_lk + bias_hh_lk (gate order i, f, g, o), decoder copied."
    )
    return Loaded(model, data, "examples", description, path, placement_known=known,
                  eval_batch_size=EXAMPLES_EVAL_BATCH, run_id=file_sha256(path)[:16])


def _examples_module(obj: nn.Module, path: Path):
    """(state dict, drop.p or None, the LSTM's between-layer dropout or None, what it is) of a pickled model."""
    what = getattr(type(obj), "pickled_as", f"{type(obj).__module__}.{type(obj).__qualname__}")
    rnn_type = getattr(obj, "rnn_type", None)
    rnn = getattr(obj, "rnn", None)
    if rnn_type is not None and rnn_type != "LSTM":
        raise CheckpointError(f"{path} holds a pickled {what} with rnn_type={rnn_type!r}; only LSTM is supported; {SUPPORTED}")
    if not isinstance(rnn, nn.LSTM):
        found = type(rnn).__name__ if rnn is not None else "no rnn attribute"
        kind = "a Transformer" if "transformer" in what.lower() or hasattr(obj, "transformer_encoder") else found
        raise CheckpointError(f"{path} holds a pickled {what} with {kind}, not an nn.LSTM rnn; {SUPPORTED}")
    if rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise CheckpointError(f"{path}: its nn.LSTM is bidirectional or projected; only a plain LSTM is supported")
    for name, cls in (("encoder", nn.Embedding), ("decoder", nn.Linear)):
        if not isinstance(getattr(obj, name, None), cls):
            raise CheckpointError(f"{path} holds a pickled {what} without an nn.{cls.__name__} {name}; {SUPPORTED}")
    drop = getattr(obj, "drop", None)
    p = float(drop.p) if isinstance(drop, nn.Dropout) else None
    return obj.state_dict(), p, float(rnn.dropout), what


def convert_examples_state(state, path="checkpoint"):
    """An examples RNNModel state dict as a LanguageModel state dict, and (V, E, H, L, tied)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds {_describe(state)}; {SUPPORTED}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from nn.DataParallel
    keys = set(state)
    if any("transformer" in str(k) or "self_attn" in str(k) or str(k).startswith(("pos_encoder.", "input_emb."))
           for k in keys):
        raise CheckpointError(f"{path} holds a Transformer's state dict ({_describe(state)}); only LSTM is supported; {SUPPORTED}")
    need = ("encoder.weight", "decoder.weight", "decoder.bias", "rnn.weight_ih_l0", "rnn.weight_hh_l0")
    missing = [k for k in need if k not in keys]
    if missing:
        raise CheckpointError(f"{path}: missing keys {', '.join(missing)} in {_describe(state)}; {SUPPORTED}")
    enc, dec, dec_b = state["encoder.weight"], state["decoder.weight"], state["decoder.bias"]
    V, E = enc.shape
    gates, H = state["rnn.weight_hh_l0"].shape
    if gates != 4 * H:
        kind = {3: "a GRU", 1: "an RNN_TANH / RNN_RELU"}.get(gates // H if H and gates % H == 0 else 0,
                                                          "not an LSTM")
        raise CheckpointError(
            f"{path}: rnn.weight_hh_l0 has shape {tuple(state['rnn.weight_hh_l0'].shape)}, {kind} "
            f"({gates // H if H else '?'} gate blocks of {H}); only LSTM (4 blocks) is supported; {SUPPORTED}"
        )
    L = 0
    while f"rnn.weight_ih_l{L}" in keys:
        L += 1
    expected = {"encoder.weight", "decoder.weight", "decoder.bias"}
    out = {"embedding.weight": enc}
    for k in range(L):
        names = [f"rnn.{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        lacking = [n for n in names if n not in keys]
        if lacking:
            raise CheckpointError(f"{path}: missing keys {', '.join(lacking)} for LSTM layer {k}; {SUPPORTED}")
        expected.update(names)
        w_ih, w_hh, b_ih, b_hh = (state[n] for n in names)
        want = {names[0]: (4 * H, E if k == 0 else H), names[1]: (4 * H, H), names[2]: (4 * H,), names[3]: (4 * H,)}
        for name, shape in want.items():
            if tuple(state[name].shape) != shape:
                raise CheckpointError(
                    f"{path}: {name} has shape {tuple(state[name].shape)}, but an LSTM with embedding {E} and "
                    f"{H} units needs {shape}"
                )
        out[f"layers.{k}.w_ih"] = w_ih
        out[f"layers.{k}.w_hh"] = w_hh
        out[f"layers.{k}.bias"] = b_ih + b_hh
    extra = sorted(str(k) for k in keys - expected)
    if extra:
        hint = " (a bidirectional or projected LSTM)" if any("reverse" in k or "weight_hr" in k for k in extra) else ""
        raise CheckpointError(
            f"{path}: unexpected keys {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}{hint}; "
            f"an examples LSTM has encoder, rnn and decoder weights only; {SUPPORTED}"
        )
    if tuple(dec.shape) != (V, H) or tuple(dec_b.shape) != (V,):
        raise CheckpointError(
            f"{path}: decoder.weight {tuple(dec.shape)} and decoder.bias {tuple(dec_b.shape)} do not fit "
            f"vocabulary {V} and {H} units (need ({V}, {H}) and ({V},))"
        )
    tied = dec is enc or (dec.shape == enc.shape and (dec.data_ptr() == enc.data_ptr() or torch.equal(dec, enc)))
    out["decoder.weight"] = enc if tied else dec
    out["decoder.bias"] = dec_b
    dtype = enc.dtype if enc.dtype in (torch.float32, torch.float64) else torch.float32
    out = {k: v.detach().to(device="cpu", dtype=dtype).clone() for k, v in out.items()}
    if tied:
        out["decoder.weight"] = out["embedding.weight"]
    return out, (V, E, H, L, bool(tied))


# --------------------------------------------------------------------------- toolkit runs


def _load_toolkit(ckpt: dict, path: Path, corpus, data_dir) -> Loaded:
    from probe.train import DTYPES, RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    saved = ckpt["config"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its 'config' is {_describe(saved)}, not a RunConfig's fields")
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
        raise CheckpointError(f"{path}: its model state has no embedding.weight ({_describe(state)})")
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
        f"{parse_placement(config.placement).spec}, {config.optimizer} for {done} on {config.corpus}; "
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
