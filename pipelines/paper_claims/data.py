"""Corpus, tokenizer and explicit stores of the paper-claims pipeline, held out by source.

Training shards, a calibration source and a test source are disjoint files of the bench
corpus. Stores are built with the public API (`streamsolve.api.count` / ``finalize``) from
the training shards; the same shards, tokenized the way streamsolve counts them, are held in
memory as int32 documents for gradient training.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


class MissingCorpus(Exception):
    """The bench corpus (or one of its named sources) is not there; the message says where."""


def corpus_dir() -> Path:
    """``STREAMSOLVE_BENCH_CORPUS``, else ``../shared/corpora/bench`` next to the repository
    (or next to its worktree folder)."""
    env = os.environ.get("STREAMSOLVE_BENCH_CORPUS")
    if env:
        return Path(env)
    for base in (REPO.parent, REPO.parent.parent):
        candidate = base / "shared" / "corpora" / "bench"
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "corpora" / "bench"


def source_paths(names: list[str]) -> list[str]:
    """Paths of the named shards; `MissingCorpus` with one line if any is absent."""
    root = corpus_dir()
    if not root.is_dir():
        raise MissingCorpus(f"bench corpus not found at {root} (set STREAMSOLVE_BENCH_CORPUS)")
    paths = [root / n for n in names]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise MissingCorpus(f"bench corpus {root} lacks {', '.join(missing)}")
    return [str(p) for p in paths]


def tokenizer(out: Path, vocab_size: int, paths: list[str], sample_bytes: int) -> Path:
    """A byte-level BPE of ``vocab_size`` trained (once, cached in ``out``) on the training
    shards only (the held-out sources never shape the tokenizer)."""
    from streamsolve.text.reading import ReadOptions, read_sample
    from streamsolve.text.tokenizer import train_bpe

    path = out / f"tokenizer-{vocab_size}.json"
    if not path.exists():
        started = time.perf_counter()
        tok = train_bpe(read_sample(paths, sample_bytes, ReadOptions()), vocab_size)
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(tok.to_str(), encoding="utf-8")
        logger.info("trained BPE V=%d on %d MB in %.1f s", vocab_size, sample_bytes >> 20,
                    time.perf_counter() - started)
    return path


def token_documents(paths: list[str], tokenizer_text: str, max_tokens: int | None = None):
    """Documents of int32 token ids, as streamsolve counts them (exactly ``max_tokens`` when
    given: the last document cut); the reading is `bench.common.read_token_documents`."""
    from bench.common import read_token_documents

    docs = [d.astype(np.int32, copy=False)
            for d in read_token_documents(paths, tokenizer_text, max_tokens)]
    return _take(docs, max_tokens) if max_tokens else docs


def _take(docs, tokens: int):
    """The leading documents holding exactly ``tokens`` tokens (the last one cut)."""
    out, n = [], 0
    for doc in docs:
        if n >= tokens:
            break
        out.append(doc[:tokens - n])
        n += out[-1].size
    return out


def positions(docs, radius: int, bos_id: int):
    """``(contexts (N, R), targets (N,))`` int64 tensors, BOS-padded like the counts (the
    benchmarks' `bench.softmax.positions`)."""
    from bench.softmax import positions as bench_positions

    return bench_positions(docs, radius, bos_id)


@dataclasses.dataclass
class Corpus:
    """One vocabulary's data: tokenizer, BOS id and the in-memory token documents."""

    vocab_size: int
    tokenizer_path: Path
    tokenizer_text: str
    bos_id: int
    train_paths: list[str]
    calibration_paths: list[str]
    train_docs: list
    test_docs: list

    @property
    def train_tokens(self) -> int:
        return int(sum(d.size for d in self.train_docs))

    @property
    def test_tokens(self) -> int:
        return int(sum(d.size for d in self.test_docs))


def leading_text(path: str, out: Path, max_bytes: int) -> str:
    """A gzip copy (cached in ``out``) of the first ``max_bytes`` of a source's text, cut at a
    blank line: the calibration file. `streamsolve.api.finalize` reads and scores all of its
    calibration files, and only ``calibration_sample`` positions are needed."""
    import gzip

    from streamsolve.text.reading import ReadOptions, ReadStats, iter_line_blocks

    target = out / f"calibration-{max_bytes}-{Path(path).name}"
    if target.exists():
        return str(target)
    kept, size = [], 0
    for block in iter_line_blocks(path, ReadOptions(), ReadStats()):
        for line in block:
            if size >= max_bytes and not line.strip():
                break
            kept.append(line)
            size += len(line.encode("utf-8"))
        else:
            continue
        break
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(target, "wt", encoding="utf-8") as handle:
        handle.write("".join(kept))
    return str(target)


def load_corpus(profile, out: Path, vocab_size: int) -> Corpus:
    """Tokenizer + training documents + test documents for one vocabulary size."""
    from streamsolve.text.tokenizer import find_bos, tokenizer_from_json

    train_paths = source_paths(profile.train_sources)
    calibration_paths = [leading_text(p, out, profile.calibration_bytes)
                         for p in source_paths([profile.calibration_source])]
    test_paths = source_paths([profile.test_source])
    tok_path = tokenizer(out, vocab_size, train_paths, profile.tokenizer_sample_bytes)
    text = tok_path.read_text(encoding="utf-8")
    _, bos_id = find_bos(tokenizer_from_json(text))
    started = time.perf_counter()
    train = token_documents(train_paths, text)
    test = token_documents(test_paths, text, profile.test_tokens)
    corpus = Corpus(vocab_size, tok_path, text, int(bos_id), train_paths, calibration_paths,
                    train, test)
    logger.info("V=%d: %s training tokens (%d shards), %s test tokens from %s (%.1f s)",
                vocab_size, f"{corpus.train_tokens:,}", len(train_paths),
                f"{corpus.test_tokens:,}", profile.test_source, time.perf_counter() - started)
    return corpus


@dataclasses.dataclass
class ExplicitStore:
    """A counted and finalized store, with the seconds of each step."""

    path: str
    radius: int
    count_seconds: float
    finalize_seconds: float
    calibrate_seconds: float
    raw_ce_lm: float
    calibrated_ce_lm: float
    tokens: int


def build_store(corpus: Corpus, radius: int, out: Path, workers: int = 1) -> ExplicitStore:
    """Count the training shards, finalize (raw), then finalize again calibrated on the
    calibration source; the store ends calibrated. Returns the timings, the
    `LanguageModel` held-out CE of both."""
    from streamsolve import api

    path = out / "stores" / f"V{corpus.vocab_size}-R{radius}.zarr"
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counted = api.count(corpus.train_paths, str(path), tokenizer=str(corpus.tokenizer_path),
                        radius=radius, aggregation="cat", scheduler="sync", workers=workers)
    t1 = time.perf_counter()
    raw = api.finalize(str(path), calibrate=False)
    t2 = time.perf_counter()
    raw_ce = raw.evaluate_ids(corpus.test_docs).cross_entropy
    t3 = time.perf_counter()
    calibrated = api.finalize(str(path), calibrate=corpus.calibration_paths)
    t4 = time.perf_counter()
    cal_ce = calibrated.evaluate_ids(corpus.test_docs).cross_entropy
    tokens = int(getattr(counted, "tokens", 0) or corpus.train_tokens)
    logger.info("store V=%d R=%d: count %.1f s, finalize %.1f s, calibrate+finalize %.1f s; "
                "held-out CE raw %.4f, calibrated %.4f", corpus.vocab_size, radius, t1 - t0,
                t2 - t1, t4 - t3, raw_ce, cal_ce)
    return ExplicitStore(str(path), radius, t1 - t0, t2 - t1, t4 - t3, float(raw_ce),
                         float(cal_ce), tokens)
