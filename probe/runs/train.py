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

import dataclasses
import io
import math
import pickle
import random
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from probe.data.corpus import Corpus, batchify, bptt_windows
from probe.data.registry import corpus_fingerprint, load_corpus
from probe.model.language_model import LanguageModel, detach_state
from probe.runs.folder import CHECKPOINT, METRICS, RESULT, RunFolder
from probe.runs.config import DTYPES, RunConfig, RunResult, RunStatus, best_epoch, learning_rates, selected_epoch


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
    """Every RNG state as tensors, numbers, strings and lists, so that a checkpoint loads with
    ``weights_only=True`` (numpy's own state would pickle an ndarray, which needs numpy's code)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "mask_generator": mask_gen.get_state(),
        "python": [version, list(mt), gauss],
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }


def _set_rng_states(states: dict, mask_gen: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    mask_gen.set_state(states["mask_generator"])
    version, mt, gauss = states["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


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

    ``run_dir``: where config, metrics and checkpoint live (probe.runs.folder);
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
        if corpus_fingerprint(config.corpus) != config.corpus_sha256():
            raise ValueError(f"the files of corpus {config.corpus!r} now hold other contents of the corpus file(s) than "
                             "when this configuration was built (its run id names those); build the configuration again")
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
    try:  # weights only: a checkpoint holds tensors, numbers, strings, lists and dicts, and never runs code
        return torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # pickled objects beyond plain data: an older format, or planted code
        folder.files.move_aside(CHECKPOINT, "it holds more than tensors, numbers, strings, lists and dicts (an older "
                                            "checkpoint format, or a planted file) and is never unpickled")
        return None
    except Exception as e:  # the recorded bytes unreadable here (another torch version?): start afresh
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else ""
        folder.files.move_aside(CHECKPOINT, f"cannot be loaded ({type(e).__name__}: {first})")
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

    status = RunStatus.FINISHED
    t_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs + 1):
        if stop_after_epoch is not None and epoch > stop_after_epoch:
            return RunResult(config, RunStatus.INTERRUPTED, epochs, best_epoch=best["epoch"], run_dir=run_dir, model=model)
        lr = learning_rates(config, [e["valid_ppl"] for e in epochs])[epoch - 1]
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        t0 = time.perf_counter()
        train_nll = _train_epoch(model, train_data, config, lr, optimizer, mask_gen, progress, epoch)
        seconds = time.perf_counter() - t0
        # NaN/inf, or a loss so large its perplexity overflows (math.exp would raise).
        if not math.isfinite(_ppl(train_nll)):
            status = RunStatus.DIVERGED
            epochs.append({"epoch": epoch, "lr": lr, "train_ppl": math.inf, "valid_ppl": math.nan, "seconds": seconds})
            if log is not None:
                log(epochs[-1])
            break
        valid_nll = evaluate(model, valid_data, config.bptt)
        if not math.isfinite(valid_nll):  # weights turned NaN/inf on the epoch's last updates
            status = RunStatus.DIVERGED
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
        if status == RunStatus.DIVERGED:
            break
        if best_epoch(epochs) == epoch:
            best = {"epoch": epoch, "model": _clone_state(model)}
        if folder is not None:
            _save_checkpoint(folder, model, mask_gen, optimizer, best, epoch, epochs, config)
            folder.files.write_json(METRICS, epochs)

    result = RunResult(config, status, epochs, best_epoch=best["epoch"], run_dir=run_dir, model=model)
    result.seconds = sum(e["seconds"] for e in epochs)
    if status == RunStatus.FINISHED:
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


