"""Runs: ``RunConfig`` and presets (``config``), training (``train``, ``cli``), the run folder (``folder``,
``manifest``), grid cells and executors (``cells``, ``grid``, ``ray_executor``) and checkpoints
(``checkpoints``, ``examples_checkpoint``)."""
