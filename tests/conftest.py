"""Shared fixtures: real text (CPython's pydoc topics, always present; the KJV from
../shared/corpora when it exists) and a small tokenizer trained on it."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

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
