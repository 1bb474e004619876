"""Shared fixtures: real text (CPython's pydoc topics, always present; the KJV from
../shared/corpora when it exists), shards written from it, and a small tokenizer trained on it."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

TIME_SCALE_ENV = "STREAMSOLVE_TEST_TIME_SCALE"


def time_scale() -> float:
    """How many times longer than on a quiet machine a test should allow for, right now.

    ``max(1, one-minute load average / cores)``, times ``$STREAMSOLVE_TEST_TIME_SCALE``
    (default 1; e.g. 3 on a slow emulated machine). Read at each call, so a test started
    while the machine is busy gets more time.
    """
    factor = 1.0
    raw = os.environ.get(TIME_SCALE_ENV, "").strip()
    if raw:
        try:
            factor = float(raw)
        except ValueError:
            factor = float("nan")
        if not 0 < factor < float("inf"):
            raise pytest.UsageError(f"{TIME_SCALE_ENV}={raw!r}: must be a positive number "
                                    "(a factor on every time limit in the tests, e.g. 2)")
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        load = 0.0
    return max(1.0, load / (os.cpu_count() or 1)) * factor


def time_limit(seconds: float) -> float:
    """A hang guard of ``seconds`` on a quiet machine, scaled by `time_scale` for this one.

    The one place where tests turn a wall-clock limit into seconds: limits exist only to
    stop a hung test, never to synchronise, so give generous quiet-machine ``seconds``
    (several times the quiet duration) and wait for a condition (a barrier, an event, a
    line from a child, polling a predicate) rather than for time to pass.
    """
    return seconds * time_scale()


def pytest_configure(config):
    time_scale()  # a bad STREAMSOLVE_TEST_TIME_SCALE stops the run before any test


def pytest_report_header(config):
    one, five, _ = os.getloadavg()
    return (f"time limits x{time_scale():.1f} (load average {one:.1f}, {five:.1f} on "
            f"{os.cpu_count()} cores; {TIME_SCALE_ENV}={os.environ.get(TIME_SCALE_ENV, '')!r})")


SHARED_CORPORA = Path(os.environ.get(
    "STREAMSOLVE_SHARED_CORPORA",
    Path(__file__).resolve().parents[2] / "shared" / "corpora"))


def pydoc_documents() -> list[str]:
    """CPython's pydoc topic texts: real English + code, shipped with every CPython."""
    from pydoc_data.topics import topics

    return [topics[name].strip("\n") for name in sorted(topics)]


@pytest.fixture(scope="session")
def documents() -> list[str]:
    """About 40 real documents (blank-line separated paragraphs kept inside)."""
    return pydoc_documents()[:40]


@pytest.fixture(scope="session")
def tokenizer_text(documents) -> str:
    """JSON of a byte-level BPE with 400 tokens trained on the documents."""
    from streamsolve.text.tokenizer import train_bpe

    lines = [line + "\n" for doc in documents for line in doc.split("\n")]
    return train_bpe(lines, 400).to_str()


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory, tokenizer_text) -> str:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(tokenizer_text, encoding="utf-8")
    return str(path)


@pytest.fixture
def sharded_corpus(tmp_path, documents):
    """Write real text (pydoc topics) to shard files under the test's ``tmp_path``.

    The fixture is a function: ``sharded_corpus(n_shards=4, compression="gz")`` returns the
    shard paths; see `write` below for its parameters.
    """
    session_documents = documents

    def write(n_shards: int = 4, compression: str | Sequence[str] = "gz", *,
              documents: Sequence[str] | None = None, folder: str = "corpus") -> list[str]:
        """Write ``n_shards`` shards; shard ``i`` holds documents ``i, i + n, i + 2n, ...``.

        Parameters
        ----------
        n_shards : int
            Number of shard files (1: the whole text in one file).
        compression : str or sequence of str
            ``"gz"``, ``"bz2"``, ``"xz"``, ``"zst"`` or ``""`` (plain text); a sequence is
            cycled over the shards (``("", "gz", "xz")`` mixes formats).
        documents : sequence of str, optional
            The text; default the session's 40 documents (`pydoc_documents()` for all).
        folder : str
            Name of the new folder (made unique when a test writes several corpora).

        Returns
        -------
        list of str
            ``FOLDER/s{i:02d}.txt[.{compression}]`` in shard order: documents joined by a
            blank line, one trailing newline.
        """
        target = tmp_path / folder
        copies = 1
        while target.exists():
            copies += 1
            target = tmp_path / f"{folder}-{copies}"
        texts = session_documents if documents is None else documents
        return [str(path) for path in write_shards(target, n_shards, compression, texts)]

    return write


def write_shards(folder: Path, n_shards: int = 4, compression: str | Sequence[str] = "gz",
                 documents: Sequence[str] | None = None) -> list[Path]:
    """What `sharded_corpus` writes, into a given folder (created; default all pydoc topics).

    For tests whose shards must sit in a particular place (a worker's directory, an upload).
    """
    texts = pydoc_documents() if documents is None else documents
    if not 1 <= n_shards <= len(texts):
        raise ValueError(f"n_shards must be in 1..{len(texts)}, got {n_shards}")
    suffixes = [compression] if isinstance(compression, str) else list(compression)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_shards):
        suffix = suffixes[i % len(suffixes)]
        name = f"s{i:02d}.txt" + (f".{suffix}" if suffix else "")
        paths.append(write_text(folder / name, "\n\n".join(texts[i::n_shards]) + "\n"))
    return paths


@pytest.fixture
def kjv_path() -> Path:
    path = SHARED_CORPORA / "kjv.txt.gz"
    if not path.exists():
        pytest.skip(f"shared corpus not available at {path} (set STREAMSOLVE_SHARED_CORPORA)")
    return path


def write_text(path: Path, text: str) -> Path:
    """Write text, compressed according to the suffix (.gz, .bz2, .xz, .zst)."""
    data = text.encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".bz2":
        import bz2
        data = bz2.compress(data)
    elif path.suffix == ".xz":
        import lzma
        data = lzma.compress(data)
    elif path.suffix == ".zst":
        import zstandard
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def random_explicit_weights(vocab_size: int, radius: int, aggregation: str = "cat",
                            form: str = "row", smoothing: str = "dirichlet", seed: int = 0):
    """Explicit weights of 80 random documents (ids 1..V-1, BOS 0): small, every form."""
    import random

    import numpy as np

    from streamsolve.core.counting import CountConfig, count_sequences
    from streamsolve.core.weights import finalize

    rng = random.Random(seed)
    docs = [[rng.randrange(1, vocab_size) for _ in range(rng.randrange(1, 40))] for _ in range(80)]
    counts = count_sequences([(np.asarray(d, dtype=np.int64), True) for d in docs],
                             CountConfig(vocab_size, radius, aggregation, bos_id=0))
    return finalize(counts, form=form, smoothing=smoothing)
