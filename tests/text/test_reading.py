"""Reading shards: compression formats, globs and directories, document modes, bad bytes."""

from __future__ import annotations

import pytest

from streamsolve.text.reading import (BUILTIN_CORPUS, CorpusError, ReadOptions, ReadStats,
                                      decode_counting, iter_document_pieces)
from streamsolve.text.shards import expand_corpus

from ..conftest import write_text

TEXT = "first line\nsecond line\n\n\nthird, new document\r\n  \nlast\n"


def pieces(path, **options):
    stats = ReadStats()
    out = [p for block in iter_document_pieces(str(path), ReadOptions(**options), stats)
           for p in block]
    return out, stats


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2", ".xz", ".zst"])
def test_every_compression_reads_the_same(tmp_path, suffix):
    path = write_text(tmp_path / f"s.txt{suffix}", TEXT)
    docs, stats = pieces(path)
    assert docs == [(["first line\n", "second line\n"], True),
                    (["third, new document\n"], True), (["last\n"], True)]
    assert stats.bytes == len(TEXT.encode()) and stats.documents == 3


def test_document_modes(tmp_path):
    path = write_text(tmp_path / "s.txt", TEXT)
    line_docs, _ = pieces(path, documents="line")
    assert [d for d, _ in line_docs] == [["first line\n"], ["second line\n"],
                                         ["third, new document\n"], ["last\n"]]
    file_docs, stats = pieces(path, documents="file")
    assert len(file_docs) == 1 and stats.documents == 1 and len(file_docs[0][0]) == 7


def test_blocks_continue_documents(tmp_path):
    path = write_text(tmp_path / "s.txt", "a b c\nd e f\ng h i\n\nj k\n")
    docs, _ = pieces(path, block_bytes=7)
    assert docs == [(["a b c\n"], True), (["d e f\n"], False), (["g h i\n"], False),
                    (["j k\n"], True)]


def test_last_line_without_newline_and_builtin_corpus(tmp_path):
    path = write_text(tmp_path / "s.txt", "no newline at end")
    assert pieces(path)[0] == [(["no newline at end\n"], True)]
    docs, stats = pieces(BUILTIN_CORPUS)
    assert stats.documents > 50 and stats.bytes > 100_000


def test_decode_counting():
    assert decode_counting("h\u00e9".encode()) == ("h\u00e9", 0)
    text, bad = decode_counting(b"a\xff\xfeb\xc3")
    assert text == "a\ufffd\ufffdb\ufffd" and bad == 3


def test_expand_corpus(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.txt", "d/a.txt.gz", "d/sub/c.txt", "d/.hidden"):
        write_text(tmp_path / name, "x\n")
    found = expand_corpus([str(tmp_path / "d")])
    assert [p.split("/d/")[1] for p in found] == ["a.txt.gz", "b.txt", "sub/c.txt"]
    assert len(expand_corpus([str(tmp_path / "d" / "*.txt*")])) == 2
    assert len(expand_corpus([f"file://{tmp_path / 'd' / 'b.txt'}"])) == 1
    with pytest.raises(CorpusError, match="missing.txt"):
        expand_corpus([str(tmp_path / "d"), str(tmp_path / "missing.txt")])


def test_document_mode_is_validated():
    with pytest.raises(ValueError, match="documents must be one of"):
        ReadOptions(documents="paragraph")


def test_compression_is_fsspecs_inference():
    """Shard compression comes from `fsspec.utils.infer_compression` (any case), limited to
    what reads as a stream."""
    from fsspec.utils import infer_compression

    from streamsolve.text.shards import compression_of

    for path in ("a.txt.gz", "b.GZ", "s3://bucket/c.jsonl.bz2", "d.xz", "e.zst", "f.txt", "g"):
        assert compression_of(path) == infer_compression(path), path
    assert compression_of("a.txt.gz") == "gzip" and compression_of("b.GZ") == "gzip"
    assert compression_of("archive.zip") is None  # not a stream: read raw (skipped as binary)


def test_upper_case_suffix_shard_is_decompressed(tmp_path):
    import gzip

    from streamsolve.text.shards import is_jsonl
    from streamsolve.text.reading import ReadOptions, ReadStats, iter_document_pieces

    path = tmp_path / "SHARD.TXT.GZ"
    path.write_bytes(gzip.compress(b"hello world\n\nsecond doc\n"))
    text = "".join(line for pieces in iter_document_pieces(str(path), ReadOptions(),
                                                                    ReadStats())
                   for lines, _ in pieces for line in lines)
    assert text == "hello world\nsecond doc\n" and not is_jsonl(str(path))
