"""The masked LSTM recurrence: ``lstm_layer`` and its backends.

``kernels`` imports only torch and triton; imports run one way,
``studies -> probe -> kernels``.
"""

from kernels.contract import MASK_NAMES, RecurrentMasks, check_inputs
from kernels.gemm import linear
from kernels.layer import BACKENDS, backend_help, canonical_backend, lstm_layer, lstm_layer_from_input

__all__ = ["BACKENDS", "backend_help", "canonical_backend", "MASK_NAMES", "RecurrentMasks", "check_inputs", "linear", "lstm_layer", "lstm_layer_from_input"]
