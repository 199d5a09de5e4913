"""What a loaded checkpoint is (``Loaded``), its one-line error, and the words both formats' messages share."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from probe.data.corpus import Corpus, Vocab
from probe.model.language_model import LanguageModel

SUPPORTED = (
    "supported: a probe.train run folder or its checkpoint.pt, or a pytorch/examples word_language_model LSTM "
    "(its RNNModel saved with torch.save(model), or its state_dict)"
)
EXAMPLES_EVAL_BATCH = 10  # examples' main.py: eval_batch_size = 10


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


def describe(obj) -> str:
    """What an unpickled checkpoint is, in a few words, for error messages."""
    if isinstance(obj, nn.Module):
        return f"a pickled {getattr(type(obj), 'pickled_as', type(obj).__qualname__)} model"
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        head = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        return f"a dict with keys {head or '(none)'}"
    return f"a {type(obj).__name__}"
