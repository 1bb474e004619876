"""Shared helpers of the benchmarks: corpora, tokenizers, timed CLI runs, tables."""

from __future__ import annotations

import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("STREAMSOLVE_BENCH_CORPUS",
                             REPO.parent / "shared" / "corpora" / "bench"))
WORK = Path(os.environ.get("STREAMSOLVE_BENCH_DIR", REPO / "out" / "bench"))

#: Small shards of every kind of text, for quick mode.
QUICK_SHARDS = ["bible-bwe.txt.gz", "bible-diaglot.txt.gz", "bible-web.txt.gz",
                "foldoc-jargon-devil.txt.gz", "wordnet-00.txt.gz"]


class Skip(Exception):
    """A benchmark cannot run here (missing corpus or package); the message says why."""


def shards(names: list[str] | None = None) -> list[str]:
    if not CORPUS.is_dir():
        raise Skip(f"bench corpus not found at {CORPUS} (set STREAMSOLVE_BENCH_CORPUS)")
    paths = sorted(str(p) for p in CORPUS.glob("*.txt.gz"))
    if names is not None:
        paths = [p for p in paths if os.path.basename(p) in names]
    return paths


#: The 1-minute load average when the benchmarks started, before their own work.
LOAD_AT_START = os.getloadavg()[0]


def machine() -> str:
    """The machine line of every table: cores, RAM, and how busy it was before we started."""
    import psutil

    busy = ("quiet" if LOAD_AT_START < 0.5 else
            "machine shared with other jobs: figures are noisy")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GB RAM; 1-minute load average "
            f"{LOAD_AT_START:.1f} before the benchmarks started ({busy})")


def bench_tokenizer(vocab_size: int) -> Path:
    """A byte-level BPE of ``vocab_size`` trained (once, cached) on a 16 MB bench sample."""
    from streamsolve.text.reading import ReadOptions, read_sample
    from streamsolve.text.tokenizer import train_bpe

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"tokenizer-{vocab_size}.json"
    if not path.exists():
        tok = train_bpe(read_sample(shards(), 16 << 20, ReadOptions()), vocab_size)
        path.write_text(tok.to_str(), encoding="utf-8")
    return path


def anthropic_tokenizer() -> Path | None:
    """The 65k-token tokenizer.json shipped in the ``anthropic==0.37.1`` package, if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("anthropic")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.json"
    return path if path.exists() else None


def run_streamsolve(args: list[str], log_name: str, env: dict | None = None
                    ) -> tuple[dict, float, int]:
    """``python -m streamsolve ARGS`` (ARGS ending in ``--json``) as a subprocess: its JSON
    summary (the last line of stdout), wall seconds, and the peak resident memory of its whole
    process tree (sampled every 200 ms). Stderr goes to ``WORK/logs/LOG_NAME.stderr``."""
    from streamsolve.engine.progress import PeakMemory

    child_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                 **(env or {})}
    log = WORK / "logs"
    log.mkdir(parents=True, exist_ok=True)
    stderr_path = log / f"{log_name}.stderr"
    started = time.perf_counter()
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "streamsolve", *args],
                                stdout=subprocess.PIPE, stderr=stderr, text=True, env=child_env)
        with PeakMemory(proc.pid, interval=0.2) as mem:
            out, _ = proc.communicate()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"streamsolve {args[0]} failed ({proc.returncode}); see "
                           f"{stderr_path}:\n" + stderr_path.read_text()[-2000:])
    return json.loads(out.strip().splitlines()[-1]), seconds, mem.peak


def run_count(corpus: list[str], store: Path, *args: str, env: dict | None = None) -> dict:
    """Run ``streamsolve count`` as a subprocess (`run_streamsolve`): its JSON summary plus
    wall seconds and the peak resident memory of its whole process tree."""
    if store.exists():
        shutil.rmtree(store)
    result, seconds, peak = run_streamsolve(
        ["count", *corpus, "--store", str(store), "--json", *args], store.name, env)
    result["wall_seconds"] = seconds
    result["peak_rss"] = peak
    result["command"] = " ".join(["streamsolve count", f"<{len(corpus)} shards>", "--store",
                                  str(store), "--json", *args])
    return result


def read_lines(paths: list[str]) -> list[str]:
    """All lines (newline kept) of the shards, decoded as streamsolve reads them."""
    from streamsolve.text.reading import ReadOptions, ReadStats, iter_line_blocks

    lines: list[str] = []
    for path in paths:
        for block in iter_line_blocks(path, ReadOptions(), ReadStats()):
            lines.extend(block)
    return lines


def read_token_documents(paths: list[str], tokenizer_text: str, max_tokens: int | None = None):
    """Documents (blank-line separated) of token ids, as streamsolve counts them."""
    import numpy as np

    from streamsolve.text.encoding import LineEncoder
    from streamsolve.text.reading import ReadOptions, ReadStats, iter_document_pieces

    encoder = LineEncoder(tokenizer_text)
    docs, total = [], 0
    for path in paths:
        for pieces in iter_document_pieces(path, ReadOptions(block_bytes=1 << 20), ReadStats()):
            for ids, starts in encoder.encode_documents(pieces):
                if not starts and docs:
                    docs[-1] = np.concatenate([docs[-1], ids])
                elif ids.size:
                    docs.append(ids.copy())
                total += ids.size
            if max_tokens and total >= max_tokens:
                return docs
    return docs


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def table(title: str, headers: list[str], rows: list[list], notes: list[str] = ()) -> str:
    """A Markdown table with a title and notes."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    lines = [f"### {title}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in cells:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    lines.append("")
    lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines) + "\n"


def gzip_copy(src: str, dst: Path, tag: str):
    """A copy of a .gz shard with one more gzip member appended (a distinct shard: the store
    skips shards whose bytes it has already ingested)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        shutil.copyfile(src, dst)
        with open(dst, "ab") as handle:
            handle.write(gzip.compress(f"\n\n{tag}\n".encode()))
