"""probe.runs.checkpoints and ``python -m probe.measure``: models trained elsewhere, converted without changing them.

pytorch/examples' word_language_model is mirrored here in miniature: its
data.py (``Dictionary``, ``ExamplesCorpus``), its ``RNNModel`` (LSTM: encoder,
drop, rnn, decoder) and its evaluate loop. A model is saved the ways examples
saves one (``torch.save(model)`` while its class lives in a module named
``model``, and as a state dict), the module is removed before loading so the
loader's stub mapping is what reads it, and the converted model's perplexity
must equal the original's, computed with the original's own forward.
"""

from __future__ import annotations

import hashlib
import math
import random
import subprocess
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.runs.checkpoints import CheckpointError, load_checkpoint

from probe.runs.examples_checkpoint import examples_corpus
from probe.data.corpus import batchify
from probe.runs.train import evaluate, train
from probe.runs.config import preset

REPO_ROOT = Path(__file__).resolve().parents[1]
REL = 1e-5
# Measurement settings small enough for a text of a few hundred words.
SMALL = ["--max-lag", "4", "--stream-batch", "2", "--windows", "16", "--probe-positions", "40",
         "--context-lengths", "1,2,4", "--max-tokens", "2000"]


# --------------------------------------------------------------------------- examples in miniature


class Dictionary:
    """examples' data.Dictionary."""

    def __init__(self):
        self.word2idx, self.idx2word = {}, []

    def add_word(self, word):
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]


class ExamplesCorpus:
    """examples' data.Corpus: one Dictionary over train, valid and test, <eos> at each line end."""

    def __init__(self, path: Path):
        self.dictionary = Dictionary()
        self.train = self.tokenize(path / "train.txt")
        self.valid = self.tokenize(path / "valid.txt")
        self.test = self.tokenize(path / "test.txt")

    def tokenize(self, path):
        with open(path, "r", encoding="utf8") as f:
            for line in f:
                for word in line.split() + ["<eos>"]:
                    self.dictionary.add_word(word)
        with open(path, "r", encoding="utf8") as f:
            idss = [torch.tensor([self.dictionary.word2idx[w] for w in line.split() + ["<eos>"]], dtype=torch.int64)
                    for line in f]
        return torch.cat(idss)


class RNNModel(nn.Module):
    """examples' model.RNNModel (LSTM and GRU), pickled as ``model.RNNModel``."""

    __module__ = "model"

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ("LSTM", "GRU"):
            self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:  # RNN_TANH, RNN_RELU
            self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=rnn_type[4:].lower(), dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.rnn_type, self.nhid, self.nlayers = rnn_type, nhid, nlayers

    def init_hidden(self, bsz):
        w = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (w.new_zeros(self.nlayers, bsz, self.nhid), w.new_zeros(self.nlayers, bsz, self.nhid))
        return w.new_zeros(self.nlayers, bsz, self.nhid)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return F.log_softmax(decoded, dim=1), hidden


class TransformerModel(nn.Module):
    """Stands for examples' TransformerModel: no rnn."""

    __module__ = "model"

    def __init__(self, ntoken, ninp):
        super().__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        self.transformer_encoder = nn.Linear(ninp, ninp)
        self.decoder = nn.Linear(ninp, ntoken)


def examples_batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


@torch.no_grad()
def examples_ppl(model: RNNModel, data: torch.Tensor, bptt: int = 35) -> float:
    """examples' evaluate(): the model's own forward, carried state, eval mode."""
    model.eval()
    hidden = model.init_hidden(data.size(1))
    total = 0.0
    for i in range(0, data.size(0) - 1, bptt):
        seq_len = min(bptt, len(data) - 1 - i)
        x, y = data[i:i + seq_len], data[i + 1:i + 1 + seq_len].reshape(-1)
        output, hidden = model(x, hidden)
        total += len(x) * F.nll_loss(output, y).item()
    return math.exp(total / (len(data) - 1))


def converted_ppl(loaded, split: str, batch: int = 10, bptt: int = 35) -> float:
    return math.exp(evaluate(loaded.model, batchify(getattr(loaded.corpus, split), batch), bptt))


@contextmanager
def as_module_model():
    """RNNModel and TransformerModel in a module named ``model`` (as examples' main.py sees them)."""
    mod = types.ModuleType("model")
    mod.RNNModel, mod.TransformerModel = RNNModel, TransformerModel
    before = sys.modules.get("model")
    sys.modules["model"] = mod
    try:
        yield
    finally:
        if before is None:
            sys.modules.pop("model", None)
        else:
            sys.modules["model"] = before


def save_whole(model, path: Path) -> Path:
    with as_module_model():
        torch.save(model, path)
    assert "model" not in sys.modules or sys.modules["model"].__dict__.get("RNNModel") is not RNNModel
    return path


@pytest.fixture
def trap(tmp_path, monkeypatch):
    """A model.py on sys.path that records being imported: the loader must never import the user's code."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    flag = tmp_path / "imported"
    (folder / "model.py").write_text(f"open({str(flag)!r}, 'w').close()\nraise ImportError('user code ran')\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "model", raising=False)
    yield flag
    assert not flag.exists(), "the loader imported the user's model.py"


# --------------------------------------------------------------------------- data


WORDS = "the a cat dog sat ran on under mat log big small red and then it saw".split()


def write_folder(folder: Path, extra: str = "") -> Path:
    """train/valid/test.txt: a few hundred words, repeated lines, a blank line, words first seen in valid/test."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(40)]
    train = lines + lines[:20] + ["", "the  cat\tsat on the mat"]
    valid = [rng.choice(lines) for _ in range(25)] + ["the zebra sat", "a big  zebra ran"]
    test = [rng.choice(lines) for _ in range(25)] + ["the quokka saw the zebra", "it saw a quokka" + extra]
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("text") / "data")


@pytest.fixture(scope="module")
def data(folder):
    return ExamplesCorpus(folder)


def make_model(ntoken, *, emb=16, hid=24, layers=2, dropout=0.3, tied=False, rnn="LSTM", steps=8, train_on=None):
    """An examples model with non-trivial, different bias_ih and bias_hh, trained a few SGD steps with dropout."""
    torch.manual_seed(1)
    model = RNNModel(rnn, ntoken, emb, hid, layers, dropout, tied)
    with torch.no_grad():
        for name, p in model.rnn.named_parameters():
            if "bias" in name:
                p.uniform_(-0.8, 0.8)
    if train_on is not None and steps:
        stream = examples_batchify(train_on, 4)
        hidden = model.init_hidden(4)
        model.train()
        for i in range(steps):
            start = (i * 10) % (stream.size(0) - 11)
            x, y = stream[start:start + 10], stream[start + 1:start + 11].reshape(-1)
            hidden = tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()
            output, hidden = model(x, hidden)
            loss = F.nll_loss(output, y)
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-1.0)
    model.eval()
    return model


@pytest.fixture(scope="module")
def lstm(data):
    return make_model(len(data.dictionary.idx2word), train_on=data.train)


def assert_same_perplexity(loaded, model, data):
    for split in ("valid", "test"):
        ids = getattr(data, split)
        original = examples_ppl(model, examples_batchify(ids, 10))
        assert converted_ppl(loaded, split) == pytest.approx(original, rel=REL), split


# --------------------------------------------------------------------------- the vocabulary


def test_examples_corpus_rebuilds_data_py_vocabulary(folder, data):
    corpus = examples_corpus(folder)
    assert list(corpus.vocab.itos) == data.dictionary.idx2word
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(corpus, split), getattr(data, split)), split
    itos = corpus.vocab.itos
    # Order of first appearance over train, then valid, then test; <eos> after the first line's words.
    assert itos.index("zebra") > max(itos.index(w) for w in WORDS if w in itos)
    assert itos.index("quokka") > itos.index("zebra")
    assert corpus.level == "word" and corpus.vocab.stoi["<eos>"] == data.dictionary.word2idx["<eos>"]
    assert str(folder) in corpus.split_note
    for name in ("train.txt", "valid.txt", "test.txt"):
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() in corpus.split_note


# --------------------------------------------------------------------------- examples checkpoints


def test_pickled_whole_model_converts_to_same_perplexity(tmp_path, folder, data, lstm, trap):
    path = save_whole(lstm, tmp_path / "model.pt")
    loaded = load_checkpoint(path, corpus=str(folder))
    assert loaded.format == "examples" and not loaded.model.training
    assert loaded.placement_known and loaded.model.placement.spec == "zaremba:p=0.3"
    c = loaded.model.config
    assert (c.vocab_size, c.emb_size, c.hidden_size, c.num_layers, c.tie_weights) == (len(data.dictionary.idx2word),
                                                                                       16, 24, 2, False)
    assert_same_perplexity(loaded, lstm, data)
    assert "Zaremba" in loaded.description and "bias_ih_lk + bias_hh_lk" in loaded.description


def test_state_dict_converts_to_same_perplexity(tmp_path, folder, data, lstm):
    path = tmp_path / "state.pt"
    torch.save(lstm.state_dict(), path)
    loaded = load_checkpoint(path, corpus=str(folder))
    assert loaded.format == "examples"
    assert not loaded.placement_known and loaded.model.placement.spec == "none"
    assert_same_perplexity(loaded, lstm, data)
    with_rate = load_checkpoint(path, corpus=str(folder), dropout=0.3)
    assert with_rate.placement_known and with_rate.model.placement.spec == "zaremba:p=0.3"


def test_both_biases_are_summed(tmp_path, folder, data, lstm):
    """Dropping either bias would change the function: the conversion must use both."""
    loaded = load_checkpoint(save_whole(lstm, tmp_path / "model.pt"), corpus=str(folder))
    for k in range(2):
        expected = getattr(lstm.rnn, f"bias_ih_l{k}") + getattr(lstm.rnn, f"bias_hh_l{k}")
        assert torch.allclose(loaded.model.layers[k].bias, expected)
        assert not torch.allclose(getattr(lstm.rnn, f"bias_hh_l{k}"), torch.zeros(1))


@pytest.mark.parametrize("how", ["whole", "state_dict"])
def test_tied_weights(tmp_path, folder, data, how):
    model = make_model(len(data.dictionary.idx2word), emb=20, hid=20, tied=True, dropout=0.2, train_on=data.train)
    path = tmp_path / "tied.pt"
    if how == "whole":
        save_whole(model, path)
    else:
        torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path, corpus=str(folder))
    assert loaded.model.config.tie_weights
    assert loaded.model.decoder.weight is loaded.model.embedding.weight
    assert_same_perplexity(loaded, model, data)


def test_untied_equal_sizes_stay_untied(tmp_path, folder, data):
    model = make_model(len(data.dictionary.idx2word), emb=20, hid=20, train_on=data.train)
    path = tmp_path / "untied.pt"
    torch.save(model.state_dict(), path)
    loaded = load_checkpoint(path, corpus=str(folder))
    assert not loaded.model.config.tie_weights
    assert_same_perplexity(loaded, model, data)


def test_vocabulary_must_match_the_encoder(tmp_path, lstm, data):
    other = write_folder(tmp_path / "other", extra=" wombat")
    path = tmp_path / "state.pt"
    torch.save(lstm.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, corpus=str(other))
    V = len(data.dictionary.idx2word)
    assert f"{V} rows" in str(err.value) and f"{V + 1} types" in str(err.value)
    with pytest.raises(CheckpointError, match="--corpus"):
        load_checkpoint(path)


def _error(path, **kw) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, **kw)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_unsupported_models_are_one_line_errors(tmp_path, folder, data, lstm, trap):
    V = len(data.dictionary.idx2word)
    gru = make_model(V, rnn="GRU")
    assert "GRU" in _error(save_whole(gru, tmp_path / "gru.pt"), corpus=str(folder))
    torch.save(gru.state_dict(), tmp_path / "gru_state.pt")
    message = _error(tmp_path / "gru_state.pt", corpus=str(folder))
    assert "GRU" in message and "LSTM" in message
    torch.save(make_model(V, rnn="RNN_TANH").state_dict(), tmp_path / "rnn.pt")
    assert "RNN_TANH" in _error(tmp_path / "rnn.pt", corpus=str(folder))
    assert "Transformer" in _error(save_whole(TransformerModel(V, 8), tmp_path / "tf.pt"), corpus=str(folder))
    torch.save(TransformerModel(V, 8).state_dict(), tmp_path / "tf_state.pt")
    assert "Transformer" in _error(tmp_path / "tf_state.pt", corpus=str(folder))

    state = lstm.state_dict()
    missing = {k: v for k, v in state.items() if k != "decoder.bias"}
    torch.save(missing, tmp_path / "missing.pt")
    assert "decoder.bias" in _error(tmp_path / "missing.pt", corpus=str(folder))
    bad = dict(state, **{"rnn.weight_ih_l1": torch.zeros(96, 7)})
    torch.save(bad, tmp_path / "shape.pt")
    message = _error(tmp_path / "shape.pt", corpus=str(folder))
    assert "rnn.weight_ih_l1" in message and "(96, 7)" in message

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    assert "supported" in _error(tmp_path / "other.pt", corpus=str(folder))
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    assert "cannot be read" in _error(tmp_path / "text.pt", corpus=str(folder))
    assert "not found" in _error(tmp_path / "absent.pt", corpus=str(folder))


# --------------------------------------------------------------------------- toolkit runs


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    config = preset("tiny", corpus=str(folder), epochs=3, batch_size=4, bptt=10, hidden_size=16, emb_size=16,
                    placement="zaremba:p=0.2")
    run_dir = tmp_path_factory.mktemp("runs") / config.run_id()
    result = train(config, run_dir, progress=False)
    assert result.status == "finished"
    return result, run_dir


def test_toolkit_run_folder_reproduces_reported_perplexity(run):
    result, run_dir = run
    for path in (run_dir, run_dir / "checkpoint.pt"):
        loaded = load_checkpoint(path)
        assert loaded.format == "toolkit" and not loaded.model.training
        assert loaded.model.placement.spec == "zaremba:p=0.2"
        assert loaded.eval_batch_size == result.config.batch_size
        for name, value in result.model.state_dict().items():
            assert torch.equal(loaded.model.state_dict()[name], value), name
        ppl = converted_ppl(loaded, "test", result.config.batch_size, result.config.bptt)
        assert ppl == pytest.approx(result.test_ppl, rel=1e-6)
        # With carried state the BPTT window changes only the rounding.
        assert converted_ppl(loaded, "test", result.config.batch_size, 35) == pytest.approx(result.test_ppl, rel=REL)
        assert loaded.reported["test_ppl"] == pytest.approx(result.test_ppl)


def test_toolkit_run_loads_the_selected_epoch(run, tmp_path):
    """The best epoch's weights where the run selects the best (the default), the last epoch's under select=final."""
    result, run_dir = run
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    best = {k: v.clone() for k, v in ckpt["best"]["model"].items()}
    ckpt["model"] = {k: v + 0.01 for k, v in best.items()}  # a last epoch that differs from the best one
    ckpt["best"]["epoch"] = 1
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    for name, value in best.items():
        assert torch.equal(loaded.model.state_dict()[name], value), name
    ckpt["config"]["select"] = "final"
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    for name, value in ckpt["model"].items():
        assert torch.equal(loaded.model.state_dict()[name], value), name


def test_toolkit_run_as_examples_is_an_error(run):
    message = _error(run[1], format="examples")
    assert "toolkit" in message


# --------------------------------------------------------------------------- the command line


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probe.measure", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def test_cli_one_checkpoint(tmp_path, folder, lstm):
    path = save_whole(lstm, tmp_path / "model.pt")
    out = tmp_path / "report"
    done = cli("--checkpoint", path, "--corpus", folder, "--out", out, *SMALL)
    assert done.returncode == 0, done.stderr
    html = (out / "measure.html").read_text()
    assert "no tests across seeds" in html
    df = pd.read_csv(out / "measure_data.csv")
    assert set(df["placement"]) == {"model"}
    assert {"test_ppl", "valid_ppl", "influence_kl_eval_half_life", "context_ppl", "position_ppl"} <= set(df["measure"])
    assert {"probe_bits", "gradient_norm"} & set(df["measure"])
    assert (out / "measure_tests.csv").exists() and (out / "measure.json").exists()


def test_cli_two_labelled_checkpoints(tmp_path, folder, lstm, run):
    path = save_whole(lstm, tmp_path / "model.pt")
    out = tmp_path / "report"
    done = cli("--checkpoint", path, "--label", "examples-lstm", "--checkpoint", run[1], "--label", "toolkit-run",
               "--corpus", folder, "--out", out, *SMALL)
    assert done.returncode == 0, done.stderr
    html = (out / "measure.html").read_text()
    assert "no tests across seeds" in html and "examples-lstm" in html and "toolkit-run" in html
    # The placements table names each label's placement, not "unknown".
    placements = html[html.index('<section id="placements">'):]
    placements = placements[:placements.index("</section>")]
    assert "not in the placement registry" not in placements and "dropout on each layer" in placements.lower()
    df = pd.read_csv(out / "measure_data.csv")
    assert set(df["placement"]) == {"examples-lstm", "toolkit-run"}
    test_ppl = df[(df["measure"] == "test_ppl") & (df["placement"] == "toolkit-run")]["value"].iloc[0]
    assert test_ppl == pytest.approx(run[0].test_ppl, rel=REL)


@pytest.mark.parametrize("args, words", [
    (["--checkpoint", "{tmp}/absent.pt"], "not found"),
    (["--checkpoint", "{tmp}/absent.pt", "--format", "bogus"], "bogus"),
    (["--checkpoint", "{tmp}/a.pt", "--checkpoint", "{tmp}/b.pt", "--label", "one"], "label"),
    ([], "--checkpoint"),
])
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, args, words):
    done = cli(*(a.format(tmp=tmp_path) for a in args), "--out", tmp_path / "out")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert words in done.stderr
    assert not (tmp_path / "out" / "measure.html").exists()
