"""Tokenizer training in a child process, so that Ctrl-C and SIGTERM stop it at once.

The BPE trainer runs in Rust and holds the calling thread until it returns: a signal sent
to that process waits for the end of training (21 s on 23 MB of text, minutes on hostile
text). `train_bpe_in_subprocess` runs `streamsolve.text.tokenizer.train_bpe` in a fresh
interpreter instead (``python -c`` with this process's ``sys.path``: fork + exec, never a
bare fork of a process whose tokenizers threads may be running). This process streams the
sample to the child's stdin and waits for the tokenizer on its stdout; a signal interrupts
that wait, the child is killed (SIGKILL) and reaped, and the exception
(`KeyboardInterrupt`, or SIGTERM's ``Terminated``) unwinds on: locks are released and
nothing is left behind (the child's stderr goes to an unnamed temporary file).

The child ignores SIGINT (a terminal's Ctrl-C reaches the whole process group: the parent
decides) and exits by itself within a second when its parent is gone (a watchdog thread:
the trainer releases the GIL while it runs).

Protocol: one JSON line ``{"vocab_size": N, "max_piece_chars": M}``, then each line of
text as a JSON string on a line of its own; the child answers with the tokenizer's JSON
and exit status 0, or a message on stderr and a non-zero status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable

from tokenizers import Tokenizer

from .tokenizer import MAX_PIECE_CHARS, TokenizerError, check_vocab_size, train_bpe

logger = logging.getLogger(__name__)

_CHILD = ("import sys; sys.path[:] = {path}\n"
          "from streamsolve.text.training_process import child_main; child_main()")
#: Text sent to the child per write (bytes of JSON lines).
_WRITE_BYTES = 1 << 20
#: Seconds between the child's checks that its parent is alive.
_WATCH_SECONDS = 0.5


def train_bpe_in_subprocess(lines: Iterable[str], vocab_size: int,
                            max_piece_chars: int | None = MAX_PIECE_CHARS) -> Tokenizer:
    """`train_bpe` in a child process that a signal to this one stops (see the module
    docstring); the same tokenizer as ``train_bpe(lines, vocab_size, max_piece_chars)``.

    Raises
    ------
    TokenizerError
        When the vocabulary size is out of bounds (before any process starts), or when
        the child fails (its last line of stderr).
    """
    check_vocab_size(vocab_size)
    if not sys.executable:  # an embedded interpreter: no python to start
        return train_bpe(lines, vocab_size, max_piece_chars)
    header = {"vocab_size": vocab_size, "max_piece_chars": max_piece_chars}
    # the child imports exactly what this process does: the same sys.path, in order
    code = _CHILD.format(path=json.dumps(sys.path))
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=errors)
        try:
            sent = _send(child, header, lines)
            text = child.stdout.read().decode("utf-8")
            status = child.wait()
        except BaseException:
            _stop(child)
            raise
        finally:
            child.stdout.close()
        if status != 0 or not sent:
            errors.seek(0)
            raise TokenizerError(_failure(status, errors.read().decode("utf-8", "replace")))
    tokenizer = Tokenizer.from_str(text)
    logger.info("trained byte-level BPE: %d tokens (asked for %d)", tokenizer.get_vocab_size(),
                vocab_size)
    return tokenizer


def _send(child: subprocess.Popen, header: dict, lines: Iterable[str]) -> bool:
    """Write the request to the child's stdin and close it; False if the child hung up."""
    try:
        child.stdin.write(json.dumps(header).encode() + b"\n")
        batch, size = [], 0
        for line in lines:
            encoded = json.dumps(line).encode() + b"\n"
            batch.append(encoded)
            size += len(encoded)
            if size >= _WRITE_BYTES:
                child.stdin.write(b"".join(batch))
                batch, size = [], 0
        child.stdin.write(b"".join(batch))
        child.stdin.close()
    except BrokenPipeError:  # the child died: its stderr says why
        return False
    return True


def _stop(child: subprocess.Popen) -> None:
    """Kill the child and reap it (this also runs while a signal unwinds)."""
    if child.poll() is None:
        child.kill()
    child.wait()
    for stream in (child.stdin, child.stdout):
        try:
            stream.close()
        except (OSError, ValueError):  # a broken pipe or a write cut by the signal
            pass


def _failure(status: int, stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    reason = lines[-1] if lines else "no message"
    how = (f"was killed by signal {-status}" if status < 0 else f"exited with status {status}")
    return f"training the tokenizer failed: the trainer process {how}: {reason}"


# -- the child ---------------------------------------------------------------------------------

def child_main() -> None:
    """Entry point of the child process (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(os.getppid())
    stdin = sys.stdin.buffer
    header = json.loads(stdin.readline())
    lines = (json.loads(line) for line in stdin)
    try:
        tokenizer = train_bpe(lines, header["vocab_size"], header["max_piece_chars"])
    except TokenizerError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
    sys.stdout.buffer.write(tokenizer.to_str().encode("utf-8"))
    sys.stdout.flush()


def _exit_with_parent(parent: int) -> None:
    """Exit this process as soon as ``parent`` is no longer its parent."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
