"""`eval`'s ``bytes`` is every byte of the input (blank lines included), so bits per byte
compare with tools that score every byte (issue 16)."""

from __future__ import annotations

import gzip
import math

from streamsolve import api


def test_eval_bytes_count_every_byte(tmp_path, sharded_corpus, tokenizer_file):
    store = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(1, ""), store, tokenizer=tokenizer_file, radius=1)
    api.finalize(store, calibrate=False)
    text = "Hello world.\n\n\n   \nSecond paragraph here.\n\n"
    plain = tmp_path / "blank.txt"
    plain.write_text(text)
    packed = tmp_path / "blank.txt.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    result = api.evaluate(store, [str(plain), str(packed)])
    assert result.bytes == 2 * len(text.encode())
    assert math.isclose(result.bits_per_byte,
                        result.cross_entropy * result.tokens / math.log(2) / result.bytes)


def test_scored_documents_hold_every_byte_of_a_stream():
    import io

    from streamsolve.score_text import stream_documents

    text = b"\n\nOne line.\n\n \nTwo\nlines.\n\n\nThree.\n\n\n"
    for mode in ("blank-line", "line", "file"):
        docs = list(stream_documents(io.BytesIO(text), mode))
        assert sum(n for _, n, _ in docs) == len(text), mode
    assert [len(lines) for lines, _, _ in stream_documents(io.BytesIO(text))] == [1, 2, 1]


def test_score_bytes_of_a_file_without_a_last_newline_are_its_bytes(tmp_path, sharded_corpus,
                                                                    tokenizer_file):
    """The reader ends an unended last line with a newline; that byte is not the file's."""
    store = str(tmp_path / "m.zarr")
    api.count(sharded_corpus(1, ""), store, tokenizer=tokenizer_file, radius=1)
    api.finalize(store, calibrate=False)
    path = tmp_path / "unended.txt"
    path.write_text("First line.\nThe last line has no newline")
    document, summary = api.score(store, [str(path)])
    assert document["bytes"] == summary["bytes"] == path.stat().st_size
    assert summary["bytes"] == api.evaluate(store, [str(path)]).bytes
