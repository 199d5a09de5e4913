"""probe.runs.estimate: a grid's wall time from a timed calibration, checked by hand."""

from __future__ import annotations

import pytest

from probe.data.registry import load_corpus
from probe.runs import estimate as est
from probe.runs.config import preset

CORPUS = "synthetic:vocab=8,train=4000,valid=1000,test=500"


def config(placement="none", **over):
    return preset("tiny", corpus=CORPUS, placement=placement, epochs=3, **over)


def test_one_run_costs_its_training_tokens_and_a_third_of_its_evaluation_tokens():
    corpus = load_corpus(CORPUS)
    c = config()
    train_tokens = corpus.train.numel()
    evaluation = 3 * corpus.valid.numel() + 2 * corpus.test.numel()
    assert est.run_seconds(c, corpus, 1000.0) == pytest.approx((3 * train_tokens + evaluation / 3) / 1000)
    assert est.run_seconds(config(train_tokens=400), corpus, 1000.0) == pytest.approx((3 * 400 + evaluation / 3) / 1000)


def test_runs_are_shared_among_workers_calibrated_once_per_kind(monkeypatch):
    corpus = load_corpus(CORPUS)
    calls = []
    monkeypatch.setattr(est, "calibrate", lambda c, corpus, threads=1: calls.append(est.kind(c)) or 1000.0)
    monkeypatch.setattr(est, "compiled_loop", lambda t: calls.append("build"))
    runs = [(config("none", seed=s), corpus, 2.0) for s in range(4)] + [(config("naive", seed=0), corpus, 2.0)]
    e = est.estimate(runs, jobs=2)
    # first an untimed warm-up (the compiled loop built or loaded, one short epoch), then one per kind
    assert calls == ["build", est.kind(config("none")), est.kind(config("none")), est.kind(config("naive"))]
    each = est.run_seconds(config(), corpus, 1000.0) + 2.0
    assert e.seconds == pytest.approx(5 * each / 2) and e.runs == 5
    assert est.estimate(runs[:1], jobs=4).seconds == pytest.approx(each)  # one run cannot be split
    assert est.estimate([], jobs=2).line(2) == "estimated wall time on this machine: every run is cached"


def test_calibration_times_a_real_short_epoch():
    corpus = load_corpus(CORPUS)
    speed = est.calibrate(config("variational"), corpus)
    assert 100 < speed < 10_000_000  # tokens per second of a tiny model on any CPU
