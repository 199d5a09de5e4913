"""The masked LSTM recurrence: ``lstm_layer`` and its backends.

``kernels`` imports only torch and triton; imports run one way,
``studies -> probe -> kernels``.
"""

from .contract import MASK_NAMES, RecurrentMasks, check_inputs
from .gemm import linear
from .layer import BACKENDS, lstm_layer, lstm_layer_from_input

__all__ = ["BACKENDS", "MASK_NAMES", "RecurrentMasks", "check_inputs", "linear", "lstm_layer", "lstm_layer_from_input"]
