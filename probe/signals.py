"""Ctrl-C and SIGTERM end a command with one line and no orphaned workers.

``handled_signals`` turns SIGTERM into ``Interrupted`` (a KeyboardInterrupt, so one ``except`` serves
both); ``exit_code`` gives the shell's convention, 128 + the signal (130 for SIGINT, 143 for SIGTERM).
``sigint_ignored`` is held while worker processes start: a spawned interpreter keeps an ignored SIGINT,
so the terminal's Ctrl-C (sent to the whole process group) reaches only the parent, which stops them.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) received; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _raise(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def handled_signals():
    """SIGTERM raises ``Interrupted(SIGTERM)`` in the main thread while this is held (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def sigint_ignored():
    """SIGINT ignored while held (in the main thread), so that processes started now ignore it for life."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
