"""Helpers of the KenLM side-by-side benchmark (`bench.kenlm`): finding KenLM's binaries,
timing a command as a process tree (CPU-seconds, wall, peak memory), writing token ids as
KenLM "sentences", reading ``query``'s per-word output, and the bits-per-byte arithmetic.

Only the timing and the binaries need a machine with KenLM; the rest is pure and covered by
``tests/test_bench_kenlm.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from . import common

#: KenLM's binaries this benchmark runs.
BINARIES = ("lmplz", "build_binary", "query")
#: bits per log10 unit (KenLM reports log10 probabilities).
LOG2_10 = math.log2(10.0)


def find_kenlm() -> Path:
    """The directory holding ``lmplz``, ``build_binary`` and ``query``: ``$KENLM_BIN``, else the
    directory of ``lmplz`` on PATH. Raises `common.Skip` (one line) when they are not there."""
    hint = "build KenLM (github.com/kpu/kenlm) and set KENLM_BIN to its build/bin directory"
    folder = os.environ.get("KENLM_BIN")
    if folder:
        missing = [b for b in BINARIES if not os.access(Path(folder) / b, os.X_OK)]
        if missing:
            raise common.Skip(f"KENLM_BIN={folder} lacks {', '.join(missing)}: {hint}")
        return Path(folder)
    found = shutil.which("lmplz")
    if found is None:
        raise common.Skip(f"KenLM's lmplz is not on PATH and KENLM_BIN is not set: {hint}")
    folder = str(Path(found).parent)
    missing = [b for b in BINARIES if not os.access(Path(folder) / b, os.X_OK)]
    if missing:
        raise common.Skip(f"{folder} (lmplz's directory) lacks {', '.join(missing)}: {hint}")
    return Path(folder)


@dataclasses.dataclass
class Measured:
    """One process tree's run: CPU-seconds (user + sys of it and every descendant it waited
    for), wall seconds and the peak resident memory of the tree, in bytes."""

    cpu: float
    wall: float
    peak: int


def run_measured(command: list[str], log: Path, *, stdin: Path | None = None,
                 stdout: Path | None = None, env: dict | None = None) -> Measured:
    """Run ``command`` to completion. CPU comes from `os.wait4` (the child's rusage, its
    waited-for descendants included); the peak from `streamsolve.engine.progress.PeakMemory`
    (the tree sampled every 200 ms plus each process's ``VmHWM``), not from ``ru_maxrss``:
    Linux carries the spawning process's high-water mark into the child's ``ru_maxrss``
    across ``exec``, so a large benchmark process would show as every child's peak (KenLM's
    own ``RSSMax`` line has that flaw too). Stdout goes to ``stdout`` (or is discarded),
    stderr to ``log``. Raises RuntimeError on a non-zero exit."""
    from streamsolve.engine.progress import PeakMemory

    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as err, \
            (open(stdin, "rb") if stdin else open(os.devnull, "rb")) as src, \
            (open(stdout, "wb") if stdout else open(os.devnull, "wb")) as out:
        proc = subprocess.Popen(command, stdin=src, stdout=out, stderr=err,
                                env={**os.environ, **(env or {})})
        with PeakMemory(proc.pid, interval=0.2) as mem:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({proc.returncode}); see "
                           f"{log}:\n" + log.read_text(errors="replace")[-2000:])
    return Measured(usage.ru_utime + usage.ru_stime, wall, mem.peak)


def self_cpu() -> float:
    """User + sys seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def spread(values: Iterable[float], fmt: str = "{:.1f}") -> str:
    """``min-max (median m)`` of several rounds, or the one value."""
    values = sorted(values)
    if len(values) == 1:
        return fmt.format(values[0])
    return (f"{fmt.format(values[0])}-{fmt.format(values[-1])} "
            f"(median {fmt.format(statistics.median(values))})")


def write_token_lines(documents: Iterable, handle) -> tuple[int, int]:
    """Write each non-empty document of token ids as one KenLM sentence: its ids in decimal,
    separated by single spaces, on one line. Returns (sentences, tokens).

    A streamsolve document (blank-line separated; newline tokens inside it) is one KenLM
    sentence, so both tools reset their context at the same places: KenLM's ``<s>`` is
    streamsolve's BOS padding. Empty documents are not written (streamsolve scores nothing
    there), so a KenLM sentence end ``</s>`` stands for one blank-line separator.
    """
    sentences = tokens = 0
    for ids in documents:
        if len(ids) == 0:
            continue
        handle.write(" ".join(map(str, ids.tolist() if hasattr(ids, "tolist") else ids)))
        handle.write("\n")
        sentences += 1
        tokens += len(ids)
    return sentences, tokens


@dataclasses.dataclass
class KenlmScore:
    """Sums over ``query -v word`` output: log10 probabilities of the tokens, of the sentence
    ends ``</s>`` (one per sentence), and the counts."""

    token_log10: float = 0.0
    end_log10: float = 0.0
    tokens: int = 0
    sentences: int = 0
    oov: int = 0

    def bits(self, with_ends: bool) -> float:
        """Total bits, with or without the sentence-end (blank-line) terms."""
        return -(self.token_log10 + (self.end_log10 if with_ends else 0.0)) * LOG2_10


def parse_query_words(lines: Iterable[str]) -> KenlmScore:
    """Sum ``query -v word`` output. Each sentence is one line of tab-separated
    ``word=ID NGRAM_LENGTH LOG10PROB`` entries, the last being ``</s>=2 ...``, then
    ``Total: T OOV: K``; the summary lines after the sentences are ignored. An entry whose
    vocabulary id is 0 is an OOV (``<unk>``)."""
    score = KenlmScore()
    for line in lines:
        if "Total:" not in line:
            continue
        entries, _, total = line.rstrip("\n").rpartition("Total:")
        for entry in entries.split("\t"):
            if not entry.strip():
                continue
            word, _, rest = entry.rpartition("=")
            vocab_id, _, log10 = rest.split(" ")
            if word == "</s>":
                score.end_log10 += float(log10)
                score.sentences += 1
            else:
                score.token_log10 += float(log10)
                score.tokens += 1
                score.oov += vocab_id == "0"
    return score


def arpa_unigrams(lines: Iterable[str]) -> int:
    """The number of unigrams an ARPA file's ``\\data\\`` header announces (``<unk>``,
    ``<s>`` and ``</s>`` included)."""
    for line in lines:
        if line.startswith("ngram 1="):
            return int(line.split("=", 1)[1])
        if line.startswith("\\1-grams:"):
            break
    raise ValueError("no 'ngram 1=' line in the ARPA header")


def unk_share_bits(oov: int, vocab_size: int, unigrams: int) -> float:
    """Bits to add to KenLM's total so that an OOV token pays its share of ``<unk>``.

    KenLM gives each unseen token the whole probability of ``<unk>``, the mass of all the
    ``vocab_size - (unigrams - 3)`` tokens the training text never showed; spread evenly over
    them (a distribution over the same ``vocab_size`` tokens streamsolve predicts), each OOV
    costs ``log2`` of their number more."""
    unseen = vocab_size - (unigrams - 3)
    return oov * math.log2(unseen) if oov and unseen > 1 else 0.0


def bits_per_byte(bits: float, n_bytes: int) -> float:
    """Bits per byte of text."""
    return bits / n_bytes


def streamsolve_bits(cross_entropy_nats: float, tokens: int) -> float:
    """Total bits of a streamsolve evaluation (mean cross-entropy in nats per token)."""
    return cross_entropy_nats * tokens / math.log(2)


def first_block_lines(path: str, n_bytes: int) -> list[str]:
    """The lines of the first read block (~``n_bytes``) of a shard, blank lines included, as
    `streamsolve.text.reading` decodes them (the held-out slices of BENCHMARKS.md section 8)."""
    from streamsolve.text.reading import ReadOptions, ReadStats, iter_line_blocks

    return next(iter(iter_line_blocks(path, ReadOptions(block_bytes=n_bytes), ReadStats())))


def decompress(paths: list[str], folder: Path) -> list[Path]:
    """Each shard decompressed (as streamsolve decodes it) to ``folder/NAME.txt``, once."""
    from streamsolve.text.reading import ReadOptions, ReadStats, iter_line_blocks

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        target = folder / Path(path).name.removesuffix(".gz")
        if not target.exists():
            partial = target.with_suffix(".part")
            with open(partial, "w", encoding="utf-8") as handle:
                for lines in iter_line_blocks(path, ReadOptions(), ReadStats()):
                    handle.writelines(lines)
            partial.rename(target)
        out.append(target)
    return out


def concatenate(paths: list[Path], target: Path) -> Path:
    """The files one after the other in ``target``, made again unless it already holds
    exactly their bytes' count (an earlier run may have left one of other files)."""
    expected = sum(path.stat().st_size for path in paths)
    if not target.exists() or target.stat().st_size != expected:
        partial = target.with_suffix(".part")
        with open(partial, "wb") as out:
            for path in paths:
                with open(path, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        partial.rename(target)
    return target


def tree_bytes(path: Path) -> int:
    """Bytes on disk of a file or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_line() -> str:
    """``uptime``'s load averages, now."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def rounds(full: bool) -> int:
    """Interleaved rounds: ``$STREAMSOLVE_BENCH_ROUNDS``, else 3 (full) or 1 (quick)."""
    return int(os.environ.get("STREAMSOLVE_BENCH_ROUNDS", 3 if full else 1))


def parts() -> set[str]:
    """The parts to run: ``$STREAMSOLVE_BENCH_KENLM_PARTS`` (comma-separated of a, b, c, n),
    else all four."""
    wanted = {p.strip() for p in os.environ.get("STREAMSOLVE_BENCH_KENLM_PARTS", "a,b,c,n")
              .split(",") if p.strip()}
    unknown = wanted - {"a", "b", "c", "n"}
    if unknown:
        raise common.Skip(f"STREAMSOLVE_BENCH_KENLM_PARTS names {', '.join(sorted(unknown))}: "
                          "use a comma-separated subset of a, b, c, n")
    return wanted
