"""Hostile corpus inputs (issue 12, items 7 and 9): lines without an end, special files in
and as a corpus, and a shard that changes between the hashing and the counting pass."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

import streamsolve
from streamsolve import api, ingest
from streamsolve.text import reading
from streamsolve.text import shards as shard_files
from streamsolve.core.counting import CountConfig
from streamsolve.engine.memory import line_bytes_for, parse_memory
from streamsolve.engine.tasks import count_shard
from streamsolve.text.reading import (CorpusError, ReadOptions, ReadStats, iter_document_pieces,
                                 iter_line_blocks, read_sample)
from streamsolve.store.model_store import ModelStore, StoreError

from ..conftest import time_limit, write_text
from ..core.test_counting import as_dict, brute_force

PACKAGE_ROOT = str(Path(streamsolve.__file__).resolve().parents[1])
WHITESPACE = b" \t\r\x0b\x0c"


def reference_pieces(line: bytes, bound: int) -> list[bytes]:
    """The documented cutting rule, written out plainly on one whole line (newline included)."""
    pieces = []
    while len(line) > bound:
        spaces = [i for i in range(1, bound + 1) if line[i] in WHITESPACE]
        if spaces:
            cut = spaces[-1]
        else:
            cut = bound
            while line[cut] & 0xC0 == 0x80:
                cut -= 1
        pieces.append(line[:cut])
        line = line[cut:]
    return pieces + [line]


LONG_LINES = [
    "Ünïcödé wörds and a veryveryverylongwordwithoutanyspace中文中文中文中文 then\tmore   spaces end",
    "short line",
    "x" * 40 + " tail",
]


def run_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    return subprocess.run([sys.executable, "-m", "streamsolve", *map(str, args)],
                          capture_output=True, text=True, timeout=time_limit(timeout), env=env)


# -- lines longer than the bound ----------------------------------------------------------------

@pytest.mark.parametrize("block_bytes", [1, 5, 13, 4096])
def test_long_lines_are_cut_by_the_documented_rule(tmp_path, block_bytes):
    path = write_text(tmp_path / "s.txt", "\n".join(LONG_LINES) + "\n")
    stats = ReadStats()
    got = [line for block in iter_line_blocks(str(path), ReadOptions(block_bytes=block_bytes,
                                                                       max_line_bytes=12), stats)
           for line in block]
    expected = [piece.decode() for line in LONG_LINES
                for piece in reference_pieces(line.encode() + b"\n", 12)]
    assert got == expected
    assert all(len(piece.encode()) <= 12 for piece in got)
    assert stats.split_lines == 2 and stats.lines == len(expected)


@pytest.mark.parametrize("block_bytes", [7, 4096])
def test_counts_of_cut_lines_are_the_pieces_ids(tmp_path, tokenizer_text, block_bytes):
    tokenizer = Tokenizer.from_str(tokenizer_text)
    config = CountConfig(tokenizer.get_vocab_size(), 3, "cat", bos_id=0)
    path = write_text(tmp_path / "s.txt", "\n".join(LONG_LINES) + "\n\nnext document\n")
    result = count_shard(str(path), tokenizer_text, config,
                         ReadOptions(block_bytes=block_bytes, max_line_bytes=12))

    def ids(lines):
        pieces = [p.decode() for line in lines for p in reference_pieces(line.encode() + b"\n", 12)]
        return [i for piece in pieces for i in tokenizer.encode(piece, add_special_tokens=False).ids]

    pairs, unigram = brute_force([ids(LONG_LINES), ids(["next document"])], config)
    assert as_dict(result.counts) == pairs
    np.testing.assert_array_equal(result.counts.unigram, unigram)
    assert result.counts.shards[0]["split_lines"] == 3  # "next document\n" is 14 bytes


def test_cut_before_a_space_keeps_byte_level_ids(tmp_path, tokenizer_text):
    """With a byte-level BPE, cuts before single spaces do not change the ids at all."""
    tokenizer = Tokenizer.from_str(tokenizer_text)
    line = " ".join(["expression", "value", "function", "pattern", "object"] * 40)
    config = CountConfig(tokenizer.get_vocab_size(), 2, "cat", bos_id=0)
    path = write_text(tmp_path / "s.txt", line + "\n")
    cut = count_shard(str(path), tokenizer_text, config, ReadOptions(max_line_bytes=30))
    whole = count_shard(str(path), tokenizer_text, config, ReadOptions())
    assert cut.counts.shards[0]["split_lines"] == 1 and whole.counts.shards[0]["split_lines"] == 0
    assert cut.counts.equal_counts(whole.counts)


def test_reading_a_long_line_holds_the_bound_plus_one_block(tmp_path):
    path = tmp_path / "one-line.txt"
    path.write_bytes(b"word " * 1_600_000)  # 8 MB, no newline
    options = ReadOptions(block_bytes=64 << 10, max_line_bytes=64 << 10)
    tracemalloc.start()
    try:
        stats = ReadStats()
        longest = max(len(line) for block in iter_line_blocks(str(path), options, stats)
                      for line in block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert longest <= 64 << 10 and stats.split_lines == 1
    assert peak < 6 * (128 << 10), f"reading held {peak} bytes"  # a few copies of 128 KiB


def test_tokenizer_sample_cuts_long_lines(tmp_path):
    path = tmp_path / "one-line.txt"
    path.write_bytes(b"sample " * 300_000)  # 2.1 MB line
    lines = list(read_sample([str(path)], 1 << 20, ReadOptions(max_line_bytes=1 << 16)))
    assert lines and max(len(line.encode()) for line in lines) <= 1 << 16


def test_jsonl_record_longer_than_the_bound_is_one_bad_record(tmp_path):
    records = [{"text": "kept"}, {"text": "y " * 100}, {"text": "also kept"}]
    path = write_text(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in records) + "\n")
    stats = ReadStats()
    docs = [lines for block in iter_document_pieces(str(path), ReadOptions(max_line_bytes=64),
                                                    stats) for lines, _ in block]
    assert docs == [["kept\n"], ["also kept\n"]] and stats.bad_records == 1


@pytest.mark.slow
def test_fifty_megabyte_line_stays_within_a_256mb_budget(tmp_path):
    """A 50 MB line without a newline under --memory 256MiB: the child's peak RSS (training a
    tokenizer on a sample of it, then counting it) stays under the budget."""
    budget = 256 * 10**6
    unit = "expression" * 20 + " value function pattern "
    text = (unit * (50_000_000 // len(unit) + 1))[:50_000_000]
    corpus = tmp_path / "long.txt"
    corpus.write_text("before\n\n" + text + "\n\nafter\n")
    del text
    env = {**os.environ, "PYTHONPATH": PACKAGE_ROOT}
    child = subprocess.Popen(
        [sys.executable, "-m", "streamsolve", "count", str(corpus), "--store",
         str(tmp_path / "m.zarr"), "--vocab-size", "300", "--memory", "256MiB", "--workers", "1",
         "--json", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = _watch_peak_rss(child.pid, kill_above=2 * budget, timeout=300)
    out, err = child.communicate()
    assert child.returncode == 0, err[-2000:]
    assert peak <= budget, f"peak RSS {peak / 2**20:.0f} MiB over the 256 MB budget"
    summary = json.loads(out)
    assert summary["split_lines"] >= 1 and summary["new_tokens"] > 100_000


def test_line_bound_is_fixed_when_the_store_is_created(tmp_path, documents, tokenizer_file):
    """Counts do not depend on a later run's --memory: the store records its line bound."""
    long_line = " ".join(documents[0].split())[:300] * 700  # ~200 KB, one line
    first = write_text(tmp_path / "first.txt", "\n\n".join(documents[:5]) + "\n")
    second = write_text(tmp_path / "second.txt", "before\n\n" + long_line + "\n\nafter\n")
    tight, roomy = "1MB", "8GB"
    assert line_bytes_for(parse_memory(tight), 1) < len(long_line) < line_bytes_for(
        parse_memory(roomy), 1)
    together = str(tmp_path / "together.zarr")
    api.count([str(first), str(second)], together, tokenizer=tokenizer_file, memory=tight,
              force_memory=True, workers=1)
    added = str(tmp_path / "added.zarr")
    api.count([str(first)], added, tokenizer=tokenizer_file, memory=tight, force_memory=True,
              workers=1)
    result = api.count([str(second)], added, memory=roomy, workers=1)
    assert result.split_lines >= 1  # cut at the store's bound, not at this run's
    assert ModelStore(added).read_counts().equal_counts(ModelStore(together).read_counts())
    bound = api.info(added)["read_options"]["max_line_bytes"]
    assert bound == line_bytes_for(parse_memory(tight), 1)
    roomy_store = str(tmp_path / "roomy.zarr")
    api.count([str(second)], roomy_store, tokenizer=tokenizer_file, memory=roomy, workers=1)
    assert api.info(roomy_store)["read_options"]["max_line_bytes"] > bound


def _watch_peak_rss(pid: int, kill_above: int, timeout: float) -> int:
    """The kernel's high-water mark of a child's resident memory (``VmHWM``), read until it
    exits; the child is killed above ``kill_above`` bytes. (``ru_maxrss`` of a child started
    from this large process would include this process's own peak, inherited through exec.)"""
    import signal
    import time

    peak, deadline = 0, time.monotonic() + time_limit(timeout)
    while True:
        try:
            with open(f"/proc/{pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status)
        except (FileNotFoundError, ProcessLookupError):
            return peak
        if "VmHWM" not in fields:  # exited (a zombie has no memory left)
            return peak
        peak = max(peak, int(fields["VmHWM"].split()[0]) * 1024)
        if peak > kill_above or time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return peak
        time.sleep(0.02)


# -- special files ---------------------------------------------------------------------------------

def test_fifo_in_a_corpus_directory_is_skipped(tmp_path, documents, tokenizer_file):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_text(folder / "a.txt", "\n\n".join(documents[:5]) + "\n")
    os.mkfifo(folder / "pipe")
    done = run_cli("count", folder, "--store", tmp_path / "m.zarr", "--tokenizer",
                   tokenizer_file, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["shards"] == 1 and summary["new_tokens"] > 0
    assert summary["skipped_shards"] == [str(folder / "pipe")]
    assert summary["skipped_reasons"] == {str(folder / "pipe"): "FIFO"}


def test_symlink_to_dev_zero_in_a_directory_is_skipped(tmp_path, documents, tokenizer_file):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_text(folder / "a.txt", "\n\n".join(documents[:5]) + "\n")
    (folder / "zero.txt").symlink_to("/dev/zero")
    done = run_cli("count", folder, "--store", tmp_path / "m.zarr", "--tokenizer",
                   tokenizer_file, "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["shards"] == 1
    assert summary["skipped_reasons"] == {str(folder / "zero.txt"): "symlink to a character device"}


def test_dangling_symlink_in_a_directory_is_skipped(tmp_path):
    write_text(tmp_path / "a.txt", "text\n")
    (tmp_path / "gone.txt").symlink_to(tmp_path / "missing")
    shards, skipped = shard_files.expand_shards([str(tmp_path)])
    assert shards == [str(tmp_path / "a.txt")]
    assert skipped == [{"path": str(tmp_path / "gone.txt"), "skipped": "dangling symlink"}]


def test_special_files_in_a_glob_are_skipped_not_opened(tmp_path):
    write_text(tmp_path / "a.txt", "text\n")
    os.mkfifo(tmp_path / "b.txt")
    shards, skipped = shard_files.expand_shards([str(tmp_path / "*.txt")])
    assert shards == [str(tmp_path / "a.txt")]
    assert skipped == [{"path": str(tmp_path / "b.txt"), "skipped": "FIFO"}]


@pytest.mark.parametrize("kind", ["device", "fifo", "symlink", "url"])
def test_special_file_named_on_the_command_line_is_refused(tmp_path, tokenizer_file, kind):
    target = {"device": "/dev/zero", "fifo": tmp_path / "pipe", "symlink": tmp_path / "z.txt",
              "url": "file:///dev/zero"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        target.symlink_to("/dev/zero")
    store = tmp_path / "m.zarr"
    done = run_cli("count", target, "--store", store, "--tokenizer", tokenizer_file, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a regular file" in lines[0], done.stderr
    assert str(target).replace("file://", "") in lines[0]
    assert not store.exists()


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in this thread after ``seconds`` (interrupts a blocking open); a
    hang guard, scaled by `time_limit`."""
    seconds = max(1, round(time_limit(seconds)))

    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_path_replaced_by_a_fifo_after_listing_is_refused_when_opened(tmp_path):
    path = tmp_path / "a.txt"
    os.mkfifo(path)
    with deadline(10), pytest.raises(CorpusError, match="not a regular file"):
        list(iter_line_blocks(str(path), ReadOptions(), ReadStats()))
    with deadline(10), pytest.raises(CorpusError, match="not a regular file"):
        shard_files.file_digest(str(path))


# -- a shard that changes between the hashing and the counting pass -----------------------------

def _grow_after_hashing(monkeypatch, path: Path, extra: bytes):
    """Append to ``path`` right after the ingest's hashing pass (and before counting)."""
    hash_stage = ingest.shard_digests

    def hash_then_grow(*args, **kwargs):
        digests = hash_stage(*args, **kwargs)
        with open(path, "ab") as handle:
            handle.write(extra)
        return digests

    monkeypatch.setattr(ingest, "shard_digests", hash_then_grow)


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_shard_growing_between_hashing_and_counting_fails_naming_it(
        tmp_path, monkeypatch, documents, tokenizer_file, suffix):
    store = str(tmp_path / "m.zarr")
    first = write_text(tmp_path / "first.txt", "\n\n".join(documents[:5]) + "\n")
    api.count([str(first)], store, tokenizer=tokenizer_file, memory="1GB")
    before = ModelStore(store).meta
    growing = write_text(tmp_path / f"growing{suffix}", "\n\n".join(documents[5:10]) + "\n")
    extra = growing.read_bytes()  # a gzip member appended is more gzip text
    _grow_after_hashing(monkeypatch, growing, extra)
    with pytest.raises(StoreError, match="changed while being ingested") as failure:
        api.count([str(growing)], store, memory="1GB")
    assert str(growing) in str(failure.value)
    after = ModelStore(store).meta
    assert after["counts"] == before["counts"] and after["shards"] == before["shards"]

    monkeypatch.undo()  # the file is stable now: the same command succeeds
    done = api.count([str(growing)], store, memory="1GB")
    (entry,) = [s for s in ModelStore(store).meta["shards"] if s["path"] == str(growing)]
    assert entry["sha256"] == hashlib.sha256(growing.read_bytes()).hexdigest()
    assert done.new_tokens == entry["tokens"] > 0


def test_compressed_shard_with_trailing_bytes_is_not_a_false_change(tmp_path, documents,
                                                                      tokenizer_file):
    """The counting pass hashes the stored bytes the decompressor leaves unread, too."""
    import zstandard

    data = zstandard.ZstdCompressor().compress(("\n\n".join(documents[:5]) + "\n").encode())
    path = tmp_path / "s.txt.zst"
    path.write_bytes(data + data)  # two frames: readers may stop after the first
    done = api.count([str(path)], str(tmp_path / "m.zarr"), tokenizer=tokenizer_file)
    (entry,) = ModelStore(str(tmp_path / "m.zarr")).meta["shards"]
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert done.new_tokens > 0
