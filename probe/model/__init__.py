"""Models: the ``LanguageModel`` (``language_model``) and ``MaskedLSTM``, the drop-in for ``nn.LSTM``,
both on one masked layer (``masked_lstm``)."""
