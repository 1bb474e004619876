"""Text-likeness: a shard that is mostly invalid UTF-8 or control bytes is skipped like a
binary file (issue 21.4), and real text of every kind is not."""

from __future__ import annotations

import gzip
import random
import time
from pathlib import Path

import pytest

import streamsolve as ss
from streamsolve.text.reading import (BinaryShardError, ReadOptions, ReadStats,
                                      decode_counting, iter_line_blocks, read_sample)
from streamsolve.text.text_likeness import (MAX_NONTEXT_SHARE, TEXT_WINDOW_BYTES,
                                            nontext_share)

from ..conftest import SHARED_CORPORA, pydoc_documents

PACKAGE = Path(ss.__file__).resolve().parent


def junk(n: int, seed: int = 0) -> bytes:
    """``head -c N /dev/urandom | tr -d '\\000'``, reproducibly."""
    return random.Random(seed).randbytes(n).replace(b"\0", b"")


def cjk_texts(suffix: str) -> list[Path]:
    """CPython's own CJK test texts (Chinese, Japanese, Korean with ASCII mixed in):
    ``*-utf8.txt`` in UTF-8, the others in the legacy encoding of their name."""
    try:
        import test
    except ImportError:
        pytest.skip("CPython's test package is not installed")
    folder = Path(test.__file__).parent / "cjkencodings"
    found = sorted(folder.glob(f"*{suffix}"))
    if not found:
        pytest.skip(f"no CJK test texts in {folder}")
    return found


def verdict(path, block_bytes: int = 8 << 20) -> str | None:
    """None if the whole shard reads as text, else the skip reason."""
    try:
        for _ in iter_line_blocks(str(path), ReadOptions(block_bytes=block_bytes), ReadStats()):
            pass
    except BinaryShardError as exc:
        return exc.reason
    return None


# -- the measure and its threshold ---------------------------------------------------------------

def test_random_bytes_are_mostly_not_text():
    assert nontext_share(junk(TEXT_WINDOW_BYTES)) > 0.5
    assert nontext_share(b"plain text\twith tabs\r\nand\x0cform feeds\n" * 100) == 0.0


def test_the_threshold_is_the_stated_share_of_a_window():
    """Control bytes and invalid UTF-8 bytes are counted alike; a window at the threshold is
    text, one byte over it is not."""
    n = TEXT_WINDOW_BYTES
    bad = int(MAX_NONTEXT_SHARE * n)
    for filler in (b"\x01", b"\xff", b"\x1b", b"\x7f"):
        at = filler * bad + b"a" * (n - bad)
        over = filler * (bad + 1) + b"a" * (n - bad - 1)
        assert nontext_share(at) <= MAX_NONTEXT_SHARE < nontext_share(over)


# -- real text is never skipped ------------------------------------------------------------------

REAL_CORPORA = ["kjv.txt.gz", "bench/python-doc.txt.gz", "bench/perl-doc.txt.gz",
                "bench/foldoc-jargon-devil.txt.gz", "bench/gcide-00.txt.gz",
                "bench/bible-wyc.txt.gz"]


@pytest.mark.parametrize("name", REAL_CORPORA)
def test_shared_corpora_are_text(tmp_path, name):
    path = SHARED_CORPORA / name
    if not path.exists():
        pytest.skip(f"shared corpus not available at {path}")
    head = gzip.open(path).read(2 << 20)
    assert nontext_share(head) < MAX_NONTEXT_SHARE / 10
    (tmp_path / "head.txt").write_bytes(head)
    assert verdict(tmp_path / "head.txt") is None


def test_source_code_and_pydoc_are_text(tmp_path):
    source = b"".join(p.read_bytes() for p in sorted(PACKAGE.rglob("*.[pc]*"))
                      if p.suffix in (".py", ".c"))
    pydoc = "\n\n".join(pydoc_documents()).encode()
    for name, data in (("source.txt", source), ("pydoc.txt", pydoc)):
        assert nontext_share(data) < 0.001
        (tmp_path / name).write_bytes(data)
        assert verdict(tmp_path / name) is None


def test_cjk_and_mixed_script_utf8_is_text():
    for path in cjk_texts("-utf8.txt"):
        assert nontext_share(path.read_bytes()) < 0.01, path.name
        assert verdict(path) is None, path.name


def test_text_with_some_invalid_bytes_is_text(tmp_path):
    """Latin-1 French in a UTF-8 corpus: every accented letter is an invalid byte (here 16%
    of the bytes, far more than real Latin-1 text has), replaced and counted, not skipped."""
    line = "caf\u00e9 na\u00efve \u00e0 la cr\u00e8me br\u00fbl\u00e9e, d\u00e9j\u00e0 vu\n"
    path = tmp_path / "latin1.txt"
    path.write_bytes(line.encode("latin-1") * 5000)
    share = nontext_share(path.read_bytes())
    assert 0.1 < share < MAX_NONTEXT_SHARE
    stats = ReadStats()
    lines = [x for block in iter_line_blocks(str(path), ReadOptions(), stats) for x in block]
    assert len(lines) == 5000 and stats.invalid_bytes == 8 * 5000


def test_cjk_text_in_a_legacy_encoding_is_skipped_with_the_fix(tmp_path):
    """GB2312, Shift-JIS or EUC-KR bytes read as UTF-8 are mostly invalid: not text to
    count; the message says to convert the file."""
    legacy = [p for p in cjk_texts(".txt") if p.stem in ("gb2312", "shift_jis", "euc_kr", "big5")]
    assert legacy
    for path in legacy:
        with pytest.raises(BinaryShardError, match="convert it to UTF-8") as caught:
            for _ in iter_line_blocks(str(path), ReadOptions(), ReadStats()):
                pass
        assert caught.value.reason == "not text" and path.name in str(caught.value)


# -- junk is skipped, at the start and later ------------------------------------------------------

def test_random_bytes_without_nul_are_skipped_and_reported(tmp_path, tokenizer_file):
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(pydoc_documents()[:20]) + "\n")
    bad = tmp_path / "junk.txt"
    bad.write_bytes(junk(100_000))
    alone = ss.count([str(text)], str(tmp_path / "a.zarr"), tokenizer=tokenizer_file)
    both = ss.count([str(text), str(bad)], str(tmp_path / "b.zarr"), tokenizer=tokenizer_file)
    assert both.skipped == [str(bad)] and both.skipped_reasons == {str(bad): "not text"}
    assert both.tokens == alone.tokens and both.invalid_bytes == 0


@pytest.mark.parametrize("block_bytes", [100, 4096, 1 << 20])
def test_verdict_does_not_depend_on_the_block_size(tmp_path, block_bytes):
    text = "\n\n".join(pydoc_documents()).encode()
    assert len(text) > 6 * TEXT_WINDOW_BYTES
    good = tmp_path / "good.txt"
    good.write_bytes(text)
    late = tmp_path / "late.txt"  # junk covers one aligned window at least
    late.write_bytes(text[:TEXT_WINDOW_BYTES + 100] + junk(2 * TEXT_WINDOW_BYTES) + text)
    tail = tmp_path / "tail.txt"  # junk in the last, partial window only
    tail.write_bytes(text[:5 * TEXT_WINDOW_BYTES] + junk(3 * TEXT_WINDOW_BYTES // 4))
    small = tmp_path / "small.txt"
    small.write_bytes(junk(500))
    assert verdict(good, block_bytes) is None
    assert verdict(late, block_bytes) == "not text"
    assert verdict(tail, block_bytes) == "not text"
    assert verdict(small, block_bytes) == "not text"


def test_a_shard_turning_to_junk_is_skipped_whole(tmp_path, tokenizer_file):
    """Text first, random bytes later: nothing of the shard is counted (not its text part
    either), even when its counts were already spilled to disk under a tiny budget."""
    docs = pydoc_documents()
    text = "\n\n".join(docs[:60]) + "\n"
    first = tmp_path / "first.txt"
    first.write_text("\n\n".join(docs[60:90]) + "\n")
    mixed = tmp_path / "mixed.txt"
    mixed.write_bytes(text.encode() + junk(200_000))
    kwargs = dict(tokenizer=tokenizer_file, memory="1MB", force_memory=True, block_bytes=64 << 10,
                  tmp=str(tmp_path / "spill"))
    alone = ss.count([str(first)], str(tmp_path / "a.zarr"), **kwargs)
    both = ss.count([str(first), str(mixed)], str(tmp_path / "b.zarr"), **kwargs)
    assert both.skipped_reasons == {str(mixed): "not text"}
    assert both.tokens == alone.tokens
    a, b = ss.ModelStore(str(tmp_path / "a.zarr")), ss.ModelStore(str(tmp_path / "b.zarr"))
    assert a.meta["counts"]["nnz"] == b.meta["counts"]["nnz"]
    entry = next(s for s in b.meta["shards"] if s["path"] == str(mixed))
    assert entry["skipped"] == "not text" and entry["tokens"] == 0 and entry["bytes"] == 0
    assert list((tmp_path / "spill").iterdir()) == []


def test_tokenizer_sample_leaves_out_junk_shards(tmp_path):
    """A shard judged not text gives the tokenizer's sample nothing, not even its text part
    read before the junk was seen."""
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(pydoc_documents()[:10]) + "\n")
    turning = tmp_path / "turning.txt"
    turning.write_bytes(b"a visible sentence\n" * 8000 + junk(2 * TEXT_WINDOW_BYTES))
    lines = list(read_sample([str(turning), str(text)], 16 << 20, ReadOptions()))
    assert lines and not any("visible" in line for line in lines)
    assert lines == list(read_sample([str(text)], 8 << 20, ReadOptions()))


# -- decoding is linear in the invalid bytes -----------------------------------------------------

def test_decode_counting_matches_pythons_replacement_and_counts_the_bytes():
    rng = random.Random(3)
    pieces = [b"ok ", "\u00e9\u4e2d\U0001f600".encode(), b"\xff", b"\xc3", b"\xe4\xb8",
              b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xef\xbf\xbd", b"\xc0\xaf", b"\x80"]
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        text, bad = decode_counting(data)
        assert text == data.decode("utf-8", "replace")
        valid = sum(len(c.encode()) for c in data.decode("utf-8", "ignore"))
        assert bad == len(data) - valid


def test_decoding_random_bytes_is_linear():
    """Decoding 400 KB of random bytes took 4.5 CPU s (each bad byte copied the rest)."""
    data = junk(400_000)
    started = time.process_time()
    text, bad = decode_counting(data)
    assert time.process_time() - started < 0.5
    assert bad > 150_000 and text == data.decode("utf-8", "replace")

