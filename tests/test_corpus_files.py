"""probe.data.text: corpora from the user's own text files and folders, through load_corpus and probe.runs.train."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from probe.data.corpus import CorpusError
from probe.data.registry import corpus_fingerprint, load_corpus
from probe.data.text import is_text_spec, parse_text_spec
from probe.runs.config import preset
from probe.runs.cli import main
from probe.runs.train import train


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _folder(root: Path, train: str, valid: str, test: str) -> Path:
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        _write(root / f"{name}.txt", text)
    return root


def _words(n_lines: int, seed: int = 0) -> str:
    """Deterministic word text: n_lines lines of 9 words, so 10 tokens per line with <eos>."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(40)]
    return "".join(" ".join(rng.choice(vocab) for _ in range(9)) + "\n" for _ in range(n_lines))


# --------------------------------------------------------------------------- single files


def test_a_file_is_cut_in_order_90_5_5_at_word_level(tmp_path):
    path = _write(tmp_path / "book.txt", _words(100))  # 1000 tokens
    corpus = load_corpus(str(path))
    assert corpus.level == "word" and corpus.split == "canonical" and corpus.name == str(path)
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (900, 50, 50)
    lines = path.read_text().splitlines()
    assert corpus.vocab.decode(corpus.train[:10]) == lines[0].split() + ["<eos>"]
    assert corpus.vocab.decode(corpus.test[-10:]) == lines[-1].split() + ["<eos>"]
    assert corpus.files == {s: str(path.resolve()) for s in ("train", "valid", "test")}
    assert corpus.sources == {str(path.resolve()): _sha(path)}
    note = corpus.split_note
    assert str(path.resolve()) in note and _sha(path) in note and "word level" in note
    assert "train = first 90% (900 tokens), valid = next 5% (50), test = last 5% (50)" in note


def test_fractions_are_options(tmp_path):
    path = _write(tmp_path / "book.txt", _words(100))
    corpus = load_corpus(f"text,valid=0.1,test=0.2:{path}")
    assert (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()) == (700, 100, 200)
    assert "train = first 70% (700 tokens), valid = next 10% (100), test = last 20% (200)" in corpus.split_note


def test_char_level_makes_every_character_a_token_newline_included(tmp_path):
    path = _write(tmp_path / "hw.txt", "hello\nworld\n")  # 12 characters
    corpus = load_corpus(f"text,level=char,valid=0.25,test=0.25:{path}")
    assert corpus.level == "char" and "char level" in corpus.split_note
    assert "".join(corpus.vocab.decode(corpus.train)) == "hello\n"
    # Vocabulary from "hello\n" only: w and r of "wor" are unseen, d of "ld\n" too.
    assert corpus.vocab.itos == ("h", "e", "l", "o", "\n", "<unk>")
    assert corpus.vocab.decode(corpus.valid) == ["<unk>", "o", "<unk>"]
    assert corpus.vocab.decode(corpus.test) == ["l", "<unk>", "\n"]
    assert corpus.unknown_counts == {"valid": 2, "test": 1}


def test_crlf_and_a_byte_order_mark_read_as_plain_text(tmp_path):
    path = _write(tmp_path / "win.txt", "\ufeffa b\r\nc d\r\n".encode("utf-8"))
    corpus = load_corpus(f"text,valid=0.2,test=0.2:{path}")  # 6 tokens: 4 / 1 / 1
    assert corpus.vocab.decode(corpus.train) == ["a", "b", "<eos>", "c"]
    assert corpus.vocab.decode(corpus.test) == ["<eos>"]
    assert "\ufeff" not in "".join(corpus.vocab.itos) and "\r" not in "".join(corpus.vocab.itos)


# --------------------------------------------------------------------------- folders and the vocabulary


def test_a_folder_gives_its_three_files_and_the_vocabulary_comes_from_train_only(tmp_path):
    root = _folder(tmp_path / "mine", "a b a c\n", "a d\n", "e e b\n")
    corpus = load_corpus(str(root) + "/")
    assert corpus.vocab.itos == ("a", "b", "c", "<eos>", "<unk>")
    assert corpus.vocab.decode(corpus.valid) == ["a", "<unk>", "<eos>"]
    assert corpus.vocab.decode(corpus.test) == ["<unk>", "<unk>", "b", "<eos>"]
    assert corpus.unknown_counts == {"valid": 1, "test": 2}
    note = corpus.split_note
    assert "added to the vocabulary" in note
    assert "1 of 3 valid tokens (33.33%)" in note and "2 of 4 test tokens (50.00%)" in note
    for split in ("train", "valid", "test"):
        path = root / f"{split}.txt"
        assert f"{split}.txt sha256 {_sha(path)}" in note
        assert corpus.sources[str(path.resolve())] == _sha(path)
        assert corpus.files[split] == str(path.resolve())


def test_no_unk_is_added_when_every_token_was_seen(tmp_path):
    corpus = load_corpus(str(_folder(tmp_path / "f", "a b c\n", "c b\n", "a\n")))
    assert "<unk>" not in corpus.vocab and corpus.unknown_counts == {"valid": 0, "test": 0}
    assert "(0 <unk>)" in corpus.split_note


def test_the_training_texts_own_unk_takes_unseen_tokens(tmp_path):
    corpus = load_corpus(str(_folder(tmp_path / "f", "a <unk> b\n", "a z\n", "<unk> b\n")))
    assert corpus.vocab.itos == ("a", "<unk>", "b", "<eos>")
    assert corpus.unknown_counts == {"valid": 1, "test": 0}  # a literal <unk> in test was seen in training
    assert "training text's own <unk>" in corpus.split_note


def test_word_level_in_a_folder_follows_pytorch_examples(tmp_path):
    corpus = load_corpus(str(_folder(tmp_path / "f", "x  y\n\nz", "x\n", "y\n")))
    # Blank lines still end in <eos>; a last line without a newline does too.
    assert corpus.vocab.decode(corpus.train) == ["x", "y", "<eos>", "<eos>", "z", "<eos>"]


# --------------------------------------------------------------------------- syntax


def test_which_strings_are_text_corpora(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_text_spec("book.txt") and is_text_spec("a/b") and is_text_spec(r"C:\corpora\book")
    assert is_text_spec("text:anything") and is_text_spec("text,level=char:x")
    assert not is_text_spec("penn")
    _write(tmp_path / "penn", "a b\n")
    assert is_text_spec("penn")  # an existing path
    _write(tmp_path / "ptb", "a b\n")
    assert corpus_fingerprint("ptb") is None  # registry names win over files
    assert corpus_fingerprint("synthetic:vocab=8") is None


def test_the_path_after_the_options_is_taken_verbatim(tmp_path):
    spec = parse_text_spec(r"text,level=char,valid=0.1:C:\corpora\my book,v2.txt")
    assert spec.path == Path(r"C:\corpora\my book,v2.txt") and spec.level == "char" and spec.valid == 0.1
    assert spec.test == 0.05 and abs(spec.train - 0.85) < 1e-12
    odd = _write(tmp_path / "a:b,c=d.txt", _words(10))
    corpus = load_corpus(f"text:{odd}")
    assert corpus.train.numel() == 90
    assert load_corpus(str(odd)).train.numel() == 90  # plain, since it holds a '/'


def test_a_relative_txt_name_is_a_path_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "notes.txt", _words(20))
    assert load_corpus("notes.txt").train.numel() == 180


def test_unknown_names_mention_text_files():
    with pytest.raises(CorpusError, match="valid names: .*ptb.*synthetic.*text file or folder") as info:
        load_corpus("penn")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- errors


def _error(tmp_path, name) -> str:
    with pytest.raises(CorpusError) as info:
        load_corpus(name)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_a_missing_file_is_a_one_line_error(tmp_path):
    assert f"text corpus file not found: {tmp_path / 'none.txt'}" == _error(tmp_path, str(tmp_path / "none.txt"))


def test_an_empty_file_is_a_one_line_error(tmp_path):
    path = _write(tmp_path / "empty.txt", b"")
    assert _error(tmp_path, str(path)) == f"text corpus file {path} is empty (0 bytes)"


def test_a_binary_file_is_a_one_line_error(tmp_path):
    path = _write(tmp_path / "data.txt", b"abc\x00def" * 10)
    message = _error(tmp_path, str(path))
    assert "looks binary" in message and "byte offset 3" in message and str(path) in message


def test_a_file_that_is_not_utf8_names_the_offset_of_the_bad_byte(tmp_path):
    path = _write(tmp_path / "latin1.txt", "caf\u00e9 au lait\n".encode("utf-8") + "na\u00efve\n".encode("latin-1"))
    message = _error(tmp_path, str(path))
    # "café au lait\n" is 14 bytes in UTF-8, then "na" and the Latin-1 byte 0xef for ï.
    assert "is not UTF-8" in message and "byte 0xef at byte offset 16" in message


def test_a_split_that_would_be_empty_says_which_and_how_many_tokens_the_file_has(tmp_path):
    path = _write(tmp_path / "short.txt", "a b\n")  # 3 tokens: 5% of them rounds to none
    message = _error(tmp_path, str(path))
    assert "the valid split (5% of the file's 3 tokens) would be empty" in message


def test_a_folder_missing_files_lists_them(tmp_path):
    root = tmp_path / "half"
    _write(root / "train.txt", "a b\n")
    message = _error(tmp_path, str(root))
    assert f"text corpus folder {root} lacks valid.txt, test.txt" in message


@pytest.mark.parametrize(
    "options,needles",
    [
        ("text,lvl=char:", ["unknown text corpus option 'lvl'", "valid options: level=word|char, valid=FRACTION"]),
        ("text,level=byte:", ["level must be word or char (got 'byte')"]),
        ("text,valid=1.5:", ["valid must be a fraction strictly between 0 and 1 (got '1.5')", "valid options"]),
        ("text,test=lots:", ["test must be a fraction", "'lots'"]),
        ("text,valid=0.5,test=0.5:", ["valid=0.5 + test=0.5 leaves no training text"]),
        ("text,level=char,level=word:", ["'level' given twice"]),
        ("text,level:", ["'level' needs a value"]),
    ],
)
def test_bad_options_are_one_line_errors_listing_the_valid_ones(tmp_path, options, needles):
    path = _write(tmp_path / "book.txt", _words(10))
    message = _error(tmp_path, options + str(path))
    for needle in needles:
        assert needle in message, message


def test_options_without_a_path_and_fractions_on_a_folder_are_errors(tmp_path):
    assert "must end with ':' and the path" in _error(tmp_path, "text,level=char")
    root = _folder(tmp_path / "f", "a\n", "a\n", "a\n")
    assert "apply to a single file" in _error(tmp_path, f"text,valid=0.1:{root}")


def test_text_corpora_have_only_the_canonical_split(tmp_path):
    path = _write(tmp_path / "book.txt", _words(10))
    with pytest.raises(CorpusError, match="only split='canonical'"):
        load_corpus(str(path), split="substitute")


# --------------------------------------------------------------------------- run identity


def test_run_id_hashes_the_file_content_in(tmp_path):
    path = _write(tmp_path / "book.txt", _words(50))
    config = preset("tiny", corpus=str(path))
    first = config.run_id()
    assert config.run_id() == first and config.corpus_sha256() == _sha(path)
    _write(path, _words(51, seed=1))  # another size too: the digest cache keys on stat
    assert config.run_id() == first  # a config's identity does no I/O: the digest was read when it was built
    config = preset("tiny", corpus=str(path))
    assert config.run_id() != first and config.corpus_sha256() == _sha(path)
    # Registry and synthetic corpora keep the plain hash of the configuration.
    plain = preset("tiny", corpus="synthetic")
    blob = json.dumps(dataclasses.asdict(plain), sort_keys=True)
    assert plain.run_id() == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_a_run_folder_of_other_file_contents_is_never_reused(tmp_path):
    path = _write(tmp_path / "book.txt", _words(50))
    config = preset("tiny", corpus=str(path), epochs=1)
    run_dir = tmp_path / "run"
    train(config, run_dir, progress=False, stop_after_epoch=0)  # writes config.json, trains nothing
    assert json.loads((run_dir / "config.json").read_text())["corpus_sha256"] == _sha(path)
    _write(path, _words(51, seed=1))
    with pytest.raises(ValueError, match="other contents of the corpus file"):
        train(config, run_dir, progress=False, stop_after_epoch=0)


# --------------------------------------------------------------------------- probe.runs.train


def _cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "probe.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_probe_train_trains_on_a_file_and_retrains_when_it_changes(tmp_path):
    path = _write(tmp_path / "book.txt", _words(300))  # 3000 tokens
    runs = tmp_path / "runs"
    args = ("--corpus", str(path), "--preset", "tiny", "--epochs", "1", "--runs-dir", str(runs), "--no-progress")
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    first = preset("tiny", corpus=str(path), epochs=1).run_id()
    assert [p.name for p in runs.iterdir()] == [first]
    assert _sha(path) in out.stderr and "book.txt" in out.stderr  # the corpus note
    assert json.loads((runs / first / "result.json").read_text())["status"] == "finished"

    _write(path, _words(300, seed=1))  # other content
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    second = preset("tiny", corpus=str(path), epochs=1).run_id()
    assert second != first and sorted(p.name for p in runs.iterdir()) == sorted([first, second])
    assert "epoch   1" in out.stderr  # trained again, not read from the old folder
    assert json.loads((runs / second / "config.json").read_text())["corpus_sha256"] == _sha(path)


def test_probe_train_reports_bad_files_in_one_line(tmp_path, capsys):
    empty = _write(tmp_path / "empty.txt", b"")
    assert main(["--corpus", str(empty), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: text corpus file {empty} is empty (0 bytes)\n"
    short = _write(tmp_path / "short.txt", _words(20))  # 200 tokens: valid and test 10 each
    assert main(["--corpus", str(short), "--runs-dir", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "valid split has 10 tokens but batch size 8 needs at least 16" in err
    assert not (tmp_path / "runs").exists()
