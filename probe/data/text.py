"""Corpora from the user's own text: one UTF-8 file cut by fractions, or a folder of three files.

The formats and conversions in full: docs/corpora.md."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probe.data.corpus import SPLITS, UNK, Corpus, CorpusError, Vocab
from probe.data.text_stream import TokenStream, sniff
from probe.files import file_sha256

LEVELS = ("word", "char")
DEFAULT_FRACTION = 0.05  # of valid and of test, for a single file
OPTIONS_HELP = "level=word|char, valid=FRACTION, test=FRACTION (valid and test: single files only)"
SYNTAX = (
    "PATH.txt (cut 90/5/5 in order), a folder PATH with train.txt, valid.txt, test.txt, "
    "or text,level=char,valid=0.1,test=0.1:PATH"
)
_LEVEL_WORDS = {
    "word": "word level (whitespace tokens, <eos> at each line end)",
    "char": "char level (every character a token, newline included)",
}


@dataclass(frozen=True)
class TextSpec:
    """A parsed text corpus string."""

    path: Path
    level: str = "word"
    valid: float = DEFAULT_FRACTION
    test: float = DEFAULT_FRACTION
    fractions_given: bool = False  # valid= or test= was written (an error for a folder)

    @property
    def train(self) -> float:
        return 1.0 - self.valid - self.test


def is_text_spec(name: str) -> bool:
    """Whether ``name`` reads as a text corpus (registry and synthetic names are to be tried first)."""
    return (
        name.startswith(("text:", "text,"))
        or "/" in name
        or "\\" in name
        or name.lower().endswith(".txt")
        or os.path.exists(name)
    )


def parse_text_spec(name: str) -> TextSpec:
    """``PATH``, ``text:PATH`` or ``text,key=value,...:PATH`` as a TextSpec (syntax: module docstring)."""
    options = ""
    if name.startswith("text:"):
        path = name[len("text:"):]
    elif name.startswith("text,"):
        options, sep, path = name[len("text,"):].partition(":")
        if not sep:
            raise CorpusError(
                f"text corpus {name!r}: the options must end with ':' and the path, e.g. text,level=char:book.txt"
            )
    else:
        path = name
    if not path:
        raise CorpusError(f"text corpus {name!r} names no file or folder")
    values: dict[str, str] = {}
    for item in options.split(",") if options else []:
        key, eq, value = (part.strip() for part in item.partition("="))
        if key not in ("level", "valid", "test"):
            raise CorpusError(f"unknown text corpus option {key!r} in {name!r}; valid options: {OPTIONS_HELP}")
        if not eq or not value:
            raise CorpusError(
                f"text corpus option {key!r} needs a value (key=value) in {name!r}; valid options: {OPTIONS_HELP}"
            )
        if key in values:
            raise CorpusError(f"text corpus option {key!r} given twice in {name!r}")
        values[key] = value
    level = values.get("level", "word")
    if level not in LEVELS:
        raise CorpusError(f"text corpus option level must be word or char (got {level!r}) in {name!r}")
    fractions = {k: _fraction(name, k, values[k]) if k in values else DEFAULT_FRACTION for k in ("valid", "test")}
    if fractions["valid"] + fractions["test"] >= 1:
        raise CorpusError(
            f"text corpus {name!r}: valid={fractions['valid']:g} + test={fractions['test']:g} leaves no training "
            "text; they must sum to less than 1"
        )
    return TextSpec(Path(path).expanduser(), level, fractions["valid"], fractions["test"],
                    fractions_given="valid" in values or "test" in values)


def _fraction(name: str, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value < 1):
        raise CorpusError(
            f"text corpus option {key} must be a fraction strictly between 0 and 1 (got {raw!r}) in {name!r}; "
            f"valid options: {OPTIONS_HELP}"
        )
    return value


# --------------------------------------------------------------------------- files


def _files(spec: TextSpec) -> dict[str, Path]:
    """The file behind each split (the same file for all three when the corpus is one file)."""
    path = spec.path
    if path.is_dir():
        if spec.fractions_given:
            raise CorpusError(
                f"text corpus folder {path}: valid= and test= apply to a single file; a folder's splits are its "
                "train.txt, valid.txt and test.txt"
            )
        files = {s: path / f"{s}.txt" for s in SPLITS}
        missing = [f.name for f in files.values() if not f.is_file()]
        if missing:
            raise CorpusError(
                f"text corpus folder {path} lacks {', '.join(missing)}; "
                "a folder needs train.txt, valid.txt and test.txt"
            )
        return files
    if path.is_file():
        return dict.fromkeys(SPLITS, path)
    if path.exists():
        raise CorpusError(f"text corpus {path} is neither a file nor a folder")
    raise CorpusError(f"text corpus file not found: {path}")




def fingerprint(name: str) -> str:
    """The sha256 of the text behind ``name``: one digest for a file, ``train.txt=...,valid.txt=...,test.txt=...``
    for a folder. ``RunConfig.run_id`` hashes it in."""
    files = _files(parse_text_spec(name))
    for path in set(files.values()):
        sniff(path)  # a binary file is refused from its first bytes, before it is hashed whole
    if len(set(files.values())) == 1:
        return file_sha256(files["train"])
    return ",".join(f"{f.name}={file_sha256(f)}" for f in files.values())


# --------------------------------------------------------------------------- loading


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.4g}%"


def load_text_corpus(name: str) -> Corpus:
    """The corpus of a text spec string (``load_corpus`` sends text specs here), read as a stream of ids
    (``probe.data.text_stream``): a binary file is refused from its first bytes, and memory stays a small
    multiple of the token count."""
    spec = parse_text_spec(name)
    files = _files(spec)
    single = len(set(files.values())) == 1
    stream = TokenStream(spec.level)
    # The training text is read first, so its types are the first ids (``TokenStream``).
    read = {path: stream.read(path) for path in dict.fromkeys(files.values())}
    sources = {str(path.resolve()): sha for path, (_, sha) in read.items()}
    if single:
        path = files["train"]
        ids = read[path][0]
        n = len(ids)
        a = round(n * spec.train)
        b = max(a, n - round(n * spec.test))
        parts = {"train": ids[:a], "valid": ids[a:b], "test": ids[b:]}
        for split, part in parts.items():
            if not len(part):
                fix = "smaller valid= and test=" if split == "train" else f"a larger {split}="
                raise CorpusError(
                    f"text corpus file {path}: the {split} split ({_pct(getattr(spec, split))} of the file's {n} "
                    f"tokens) would be empty; "
                    f"use a longer file or {fix}"
                )
        where = (
            f"text file {path.resolve()} (sha256 {read[path][1]}), {_LEVEL_WORDS[spec.level]}: {n:,} tokens cut in "
            f"order into train = first {_pct(spec.train)} ({a:,} tokens), valid = next {_pct(spec.valid)} "
            f"({b - a:,}), test = last {_pct(spec.test)} ({n - b:,})"
        )
    else:
        parts = {s: read[f][0] for s, f in files.items()}
        hashes = ", ".join(f"{f.name} sha256 {read[f][1]}" for f in files.values())
        sizes = ", ".join(f"{s} = {f.name} ({len(parts[s]):,} tokens)" for s, f in files.items())
        where = f"text folder {spec.path.resolve()} ({hashes}), {_LEVEL_WORDS[spec.level]}: {sizes}"

    m = int(parts["train"].max()) + 1  # the training vocabulary: ids 0..m-1, in order of first appearance
    itos = stream.itos[:m]
    unknown = {s: int((parts[s] >= m).sum()) for s in ("valid", "test")}
    own_unk = UNK in itos
    if any(unknown.values()) and not own_unk:
        itos = [*itos, UNK]
    vocab = Vocab(itos)
    unk_id = vocab.stoi[UNK] if UNK in vocab.stoi else None
    note = f"{where}; vocabulary of {len(vocab):,} types from the training text only, in order of first appearance; "
    counts = ", ".join(
        f"{unknown[s]:,} of {len(parts[s]):,} {s} tokens ({unknown[s] / len(parts[s]):.2%})" for s in unknown
    )
    if not any(unknown.values()):
        note += f"every valid and test token occurs in the training text (0 {UNK})"
    elif own_unk:
        note += f"tokens unseen in training become the training text's own {UNK}: {counts}"
    else:
        note += f"tokens unseen in training become {UNK} (added to the vocabulary for them): {counts}"
    encoded = {s: torch.from_numpy(np.where(parts[s] >= m, unk_id if unk_id is not None else 0, parts[s]))
               for s in SPLITS}
    return Corpus(
        name=name,
        level=spec.level,
        vocab=vocab,
        **encoded,
        split="canonical",
        split_note=note,
        files={s: str(f.resolve()) for s, f in files.items()},
        sources=sources,
        unknown_counts=unknown,
    )
