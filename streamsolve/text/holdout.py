"""Holding a deterministic part of the text out of counting (for calibration and evaluation).

Lines are grouped in runs of `HoldOut.group_lines` non-blank lines, and a run is held out
when a keyed hash of (shard name, run index) falls below the fraction. Held-out runs start
fresh documents, and so does the training text after them. The split depends only on the
shard's name and its lines: not on read blocks, workers or the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os


@dataclasses.dataclass(frozen=True)
class HoldOut:
    """Which runs of lines are held out of counting.

    Parameters
    ----------
    fraction : float
        Expected fraction of runs held out (0 holds out nothing).
    group_lines : int
        Non-blank lines per run.
    max_tokens_per_shard : int
        Held-out token ids returned per shard at most (the rest are still held out of
        counting, but not returned).
    """

    fraction: float = 0.0
    group_lines: int = 64
    max_tokens_per_shard: int = 200_000

    def __post_init__(self):
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"held-out fraction must be in [0, 1), got {self.fraction}")

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
        Lines seen so far (run ``lines // group_lines`` is the current one).
    """

    def __init__(self, holdout: HoldOut, path: str):
        self.holdout = holdout
        self.key = shard_key(path)
        self.lines = 0

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
                group = self.lines // holdout.group_lines
                self.lines += 1
                held_now = holdout.is_heldout(self.key, group)
                if run_held is not None and held_now != run_held:
                    (held if run_held else train).append((run, run_starts))
                    run, run_starts = [], True  # a switch starts a fresh document
                run_held = held_now
                run.append(line)
            if run:
                (held if run_held else train).append((run, run_starts))
        return train, held, bool(run_held)
