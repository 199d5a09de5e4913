"""``MaskedLSTM``, the drop-in for ``torch.nn.LSTM``; it lives in ``probe.model.masked_lstm``.

``SAFE_GLOBALS`` is what ``torch.load(..., weights_only=True)`` needs allowed to load a whole model saved
with ``torch.save(model)`` that holds a ``MaskedLSTM``, beside the model's own classes (as for
``nn.LSTM``): ``with torch.serialization.safe_globals([MyModel, nn.Linear, *SAFE_GLOBALS]): torch.load(f)``.
A ``MaskedLSTM`` pickles to plain data (its placement as its spec string), so nothing else is needed.
"""

from probe.model.masked_lstm import MaskedLSTM

SAFE_GLOBALS = [MaskedLSTM]

__all__ = ["MaskedLSTM", "SAFE_GLOBALS"]
