"""What the ``streamsolve`` process does around a command, from its first instant: Ctrl-C
and SIGTERM end it with one line (exit 130 / 143) at any moment, and output into a closed
pipe (``streamsolve score ... | head``) ends it quietly with exit 0.

Only the standard library is imported here, so `streamsolve.cli.main` can set this up before
anything heavy (Dask, Zarr, NumPy, tokenizers) is imported: those imports run inside the
guarded region, and a Ctrl-C during start-up is one line, not a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable


class Terminated(SystemExit):
    """SIGTERM, raised in the main thread so that a run unwinds as on Ctrl-C (exit 143)."""


def _raise_terminated(signum, frame):
    raise Terminated(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds():
    """Within: SIGTERM unwinds the command like Ctrl-C (locks released, spill files and
    unfinished outputs removed). Only in the main thread (signals are delivered there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Command:
    """The running command's name for messages (``streamsolve count``), once it is known."""

    label = "streamsolve"


def run_guarded(body: Callable[[Command], int]) -> int:
    """Run ``body(command)`` (it parses, imports, runs and prints; returns the exit status)
    with Ctrl-C, SIGTERM and a closed standard output handled wherever they happen.

    Returns
    -------
    int
        ``body``'s status; 130 after Ctrl-C, 143 after SIGTERM (one line on stderr each);
        0 when standard output was closed by its reader (nothing on stderr).
    """
    command = Command()
    try:
        with sigterm_unwinds():
            return body(command)
    except KeyboardInterrupt:
        _say(f"{command.label}: interrupted")
        _quiet_shutdown()
        return 130
    except Terminated as exc:
        _say(f"{command.label}: terminated")
        _quiet_shutdown()
        return exc.code
    except BrokenPipeError:
        if not stdout_is_closed():
            raise
        silence_stdout()
        return 0


def _quiet_shutdown():
    """After an interruption the one line is the last: the event loop of Zarr's I/O thread
    would otherwise log its cancelled tasks ("Task was destroyed but it is pending!") as
    the interpreter exits."""
    logging.getLogger("asyncio").disabled = True


def _say(line: str):
    with contextlib.suppress(OSError, ValueError):  # stderr itself may be gone
        print(line, file=sys.stderr)


def stdout_is_closed() -> bool:
    """Whether standard output is a pipe or socket whose reader is gone (True when it
    cannot be told, e.g. a captured stream: a broken pipe is then taken to be stdout's)."""
    try:
        fd = sys.stdout.fileno()
        import select

        poller = select.poll()
        poller.register(fd, 0)  # errors and hang-ups are always reported
        return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def silence_stdout():
    """Point standard output at /dev/null, so the interpreter's final flush of what is still
    buffered does not fail again on the closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file: nothing will be flushed to a pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
