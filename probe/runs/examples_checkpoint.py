"""Checkpoints of pytorch/examples' word_language_model: a restricted unpickler, its vocabulary, and conversion to a LanguageModel."""

from __future__ import annotations

import math
import pickle
import types
from pathlib import Path

import torch
from torch import nn

from probe.data.corpus import EOS, SPLITS, Corpus, CorpusError, Vocab
from probe.data.registry import DATASETS, resolve_data_dir
from probe.files import file_sha256
from probe.model.language_model import LanguageModel, ModelConfig
from probe.placements import parse_placement
from probe.runs.loaded import EXAMPLES_EVAL_BATCH, SUPPORTED, CheckpointError, Loaded, describe

_STUB_MODULES = ("model", "__main__")


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
        raise RuntimeError(f"a stub of {self.pickled_as} cannot run; convert it with probe.runs.checkpoints")


_STUBS: dict[str, type] = {}


def _stub(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STUBS:
        _STUBS[key] = type(name, (ExamplesModelStub,), {"pickled_as": key, "__module__": __name__})
    return _STUBS[key]


def _is_stub_module(module: str) -> bool:
    return module in _STUB_MODULES or module.endswith(".model")


# Every global a pickled word_language_model RNNModel holds besides its own class: its submodules, the
# tensor and parameter rebuilders, and the containers nn.Module pickles. Nothing else is ever imported.
ALLOWED_GLOBALS = frozenset({
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("__builtin__", "set"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch.nn.modules.sparse", "Embedding"), ("torch.nn.modules.dropout", "Dropout"),
    ("torch.nn.modules.linear", "Linear"),
    ("torch.nn.modules.rnn", "LSTM"), ("torch.nn.modules.rnn", "GRU"), ("torch.nn.modules.rnn", "RNN"),
})


class RefusedGlobal(pickle.UnpicklingError):
    """A global outside ``ALLOWED_GLOBALS``; the message names it."""


class StubUnpickler(pickle.Unpickler):
    """Maps examples' model classes (module ``model``, ``*.model`` or ``__main__``) to stubs and allows only
    ``ALLOWED_GLOBALS`` besides: any other global is refused with an UnpicklingError that names it."""

    def find_class(self, module, name):
        if _is_stub_module(module):
            return _stub(module, name)
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobal(f"its pickle names the global {module}.{name}, which a word_language_model "
                                     "checkpoint never holds, so it was refused")


def _stub_load(file, **kwargs):
    return StubUnpickler(file, **kwargs).load()


STUB_PICKLE = types.ModuleType("probe_checkpoints_pickle")
STUB_PICKLE.Unpickler = StubUnpickler
STUB_PICKLE.load = _stub_load
STUB_PICKLE.loads = pickle.loads
STUB_PICKLE.UnpicklingError = pickle.UnpicklingError


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


def load_examples(obj, path: Path, corpus, data_dir, dropout: float | None) -> Loaded:
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
        raise CheckpointError(f"{path} holds {describe(state)}; {SUPPORTED}")
    if state and all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from nn.DataParallel
    keys = set(state)
    if any("transformer" in str(k) or "self_attn" in str(k) or str(k).startswith(("pos_encoder.", "input_emb."))
           for k in keys):
        raise CheckpointError(f"{path} holds a Transformer's state dict ({describe(state)}); only LSTM is supported; {SUPPORTED}")
    need = ("encoder.weight", "decoder.weight", "decoder.bias", "rnn.weight_ih_l0", "rnn.weight_hh_l0")
    missing = [k for k in need if k not in keys]
    if missing:
        raise CheckpointError(f"{path}: missing keys {', '.join(missing)} in {describe(state)}; {SUPPORTED}")
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


