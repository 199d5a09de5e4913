"""Corpora: types and batching (``corpus``), the named corpora (``registry``, ``download``), the user's own
text (``text``) and the synthetic language with planted copies (``synthetic``, ``synthetic_spec``)."""
