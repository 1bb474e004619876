"""Holding a deterministic part of the text out of counting (for calibration and evaluation).

Lines are grouped in runs of at most `HoldOut.group_lines` lines and about
`HoldOut.group_bytes` bytes (whichever comes first), and a run is held out when a keyed hash
of (shard name, run index) falls below the fraction. A line longer than ``group_bytes`` (a
chapter or a whole book on one line) is split by position into pieces of at most
``group_bytes`` bytes, cut before a whitespace byte as `streamsolve.text.reading.cut_point`
cuts long lines, each piece a run of its own; neighbouring pieces on the same side are joined
again, so a line is only cut where held-out text begins or ends. So corpora of long lines
hold out about the fraction of their bytes too, not nothing.

Held-out runs start fresh documents, and so does the training text after them. The split
depends only on the shard's name and its lines: not on read blocks, workers or the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from .reading import cut_point


@dataclasses.dataclass(frozen=True)
class HoldOut:
    """Which runs of lines are held out of counting.

    Parameters
    ----------
    fraction : float
        Expected fraction of runs held out (0 holds out nothing).
    group_lines : int
        Lines per run at most.
    group_bytes : int
        A run ends at the first line that brings it to this many UTF-8 bytes; longer lines
        are split by position into pieces of at most this many bytes.
    max_tokens_per_shard : int
        Held-out token ids returned per shard at most (the rest are still held out of
        counting, but not returned).
    """

    fraction: float = 0.0
    group_lines: int = 64
    group_bytes: int = 16384
    max_tokens_per_shard: int = 200_000

    def __post_init__(self):
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"held-out fraction must be in [0, 1), got {self.fraction}")
        if self.group_lines < 1 or self.group_bytes < 16:
            raise ValueError("group_lines must be >= 1 and group_bytes >= 16")

    @classmethod
    def for_text(cls, fraction: float, text_bytes: float, min_runs: int = 64) -> "HoldOut":
        """A hold-out whose runs are small enough that about ``min_runs`` runs are held out
        of ``text_bytes`` of text (runs of 1 KiB to 16 KiB): small corpora and corpora of
        long lines still hold out text spread over the corpus."""
        group = int(text_bytes * fraction / min_runs) if fraction > 0 else cls.group_bytes
        return cls(fraction, group_bytes=int(min(cls.group_bytes, max(1024, group))))

    def describe(self) -> str:
        """What is held out, in words (for summaries and logs)."""
        return (f"{self.fraction:.1%} of runs of up to {self.group_lines} lines or "
                f"{self.group_bytes:,} bytes (longer lines split by position)")

    def is_heldout(self, shard_key: str, group: int) -> bool:
        """Whether run ``group`` of the shard named ``shard_key`` is held out."""
        if self.fraction <= 0:
            return False
        digest = hashlib.blake2b(f"{shard_key}\0{group}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2.0**64 < self.fraction


def shard_key(path: str) -> str:
    """The name of a shard used for hold-out hashing (its base name: stable across mounts)."""
    return os.path.basename(path.rstrip("/")) or path


class RunSplitter:
    """Splits one shard's read blocks into training and held-out pieces at run boundaries.

    Parameters
    ----------
    holdout : HoldOut
    path : str
        The shard (its `shard_key` keys the hash).

    Attributes
    ----------
    lines : int
        Lines seen so far.
    group : int
        Index of the current run.
    """

    def __init__(self, holdout: HoldOut, path: str):
        self.holdout = holdout
        self.key = shard_key(path)
        self.lines = 0
        self.group = 0
        self._run_lines = 0
        self._run_bytes = 0

    def _segments(self, line: str):
        """``(text, group, whole)`` of one line: the line itself, or its position pieces."""
        holdout = self.holdout
        data = line.encode("utf-8", "surrogatepass")
        if len(data) <= holdout.group_bytes:
            group = self.group
            self._run_lines += 1
            self._run_bytes += len(data)
            if self._run_lines >= holdout.group_lines or self._run_bytes >= holdout.group_bytes:
                self._next_group()
            yield line, group, True
            return
        if self._run_lines:
            self._next_group()
        start = 0
        while start < len(data):
            end = (len(data) if len(data) - start <= holdout.group_bytes
                   else cut_point(data, start, holdout.group_bytes))
            yield data[start:end].decode("utf-8", "surrogatepass"), self.group, False
            self.group += 1
            start = end

    def _next_group(self) -> None:
        self.group += 1
        self._run_lines = self._run_bytes = 0

    def split(self, pieces) -> tuple[list, list, bool]:
        """``(train, held, ends_held)`` of one block's pieces (``(lines, starts)`` pairs).

        ``ends_held`` says whether the block's last line was held out (the next block's
        training text must then start a fresh document).
        """
        holdout = self.holdout
        if holdout.fraction <= 0:
            return list(pieces), [], False
        train, held = [], []
        run_held = False
        for lines, starts in pieces:
            run: list[str] = []
            run_held = None
            run_starts = starts
            for line in lines:
                self.lines += 1
                joinable = False  # whether the last entry of run is a piece of this line
                for text, group, whole in self._segments(line):
                    held_now = holdout.is_heldout(self.key, group)
                    if run_held is not None and held_now != run_held:
                        (held if run_held else train).append((run, run_starts))
                        run, run_starts = [], True  # a switch starts a fresh document
                        joinable = False
                    run_held = held_now
                    if joinable:
                        run[-1] += text
                    else:
                        run.append(text)
                    joinable = not whole
            if run:
                (held if run_held else train).append((run, run_starts))
        return train, held, bool(run_held)
