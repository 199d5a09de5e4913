"""``MaskedLSTM``, the drop-in for ``torch.nn.LSTM``; it lives in ``probe.model.masked_lstm``."""

from probe.model.masked_lstm import MaskedLSTM

__all__ = ["MaskedLSTM"]
