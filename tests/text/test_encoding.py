"""The line-safe batched encoder: joined inputs, the piece marker and small batches give the
ids of each line tokenized on its own."""

from __future__ import annotations

import dataclasses

import pytest
from tokenizers import Tokenizer

from streamsolve.engine import memory
from streamsolve.engine.memory import MemoryPlan, parse_memory
from streamsolve.text import encoding
from streamsolve.text.encoding import LineEncoder, line_tokenizer, piece_marker


def test_joined_lines_tokenize_exactly_as_single_lines(tokenizer_text):
    tricky = ["plain line\n", "trailing spaces   \n", "  leading\n", "\n", "tabs\t\t\n",
              "numbers 12345 and symbols ?!\n", "caf\u00e9 \u00fcber\n", " \n", "end"]
    tokenizer = Tokenizer.from_str(tokenizer_text)
    fast, joinable = line_tokenizer(tokenizer_text)
    assert joinable
    per_line = [i for line in tricky for i in tokenizer.encode(line, add_special_tokens=False).ids]
    assert fast.encode("".join(tricky), add_special_tokens=False).ids == per_line
    batch = fast.encode_batch_fast(["".join(tricky[:4]), "".join(tricky[4:])],
                                   add_special_tokens=False)
    assert [i for e in batch for i in e.ids] == per_line


def test_metaspace_first_tokenizer_is_not_joined():
    from tokenizers import models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "\u2581a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    _, joinable = line_tokenizer(tok.to_str())
    assert not joinable


def test_pieces_joined_by_the_bos_marker_give_per_line_ids(tmp_path, documents, tokenizer_text):
    tokenizer = Tokenizer.from_str(tokenizer_text)
    assert piece_marker(tokenizer_text, 0) == ("<|doc|>", 0)
    pieces = [([line + "\n" for line in doc.split("\n") if line.strip()], True)
              for doc in documents[:12]]
    pieces = [p for p in pieces if p[0]]
    expected = [[i for line in lines for i in tokenizer.encode(line, add_special_tokens=False).ids]
                for lines, _ in pieces]
    for extra in ([], [(["a line that mentions <|doc|> literally\n"], True)]):
        # a text containing the marker itself falls back to one input per piece
        test_pieces = pieces + extra
        want = expected + [[i for line in lines for i in tokenizer.encode(line, add_special_tokens=False).ids]
                           for lines, _ in extra]
        flat, lengths = LineEncoder(tokenizer_text, 0).encode_pieces(test_pieces)
        assert lengths.tolist() == [len(w) for w in want]
        assert flat.tolist() == [i for w in want for i in w]


@pytest.mark.parametrize("serial", [False, True])
def test_tokenizing_in_small_batches_gives_the_same_ids(monkeypatch, documents, tokenizer_text,
                                                         serial):
    """The plain tokenizer path (the piece cache makes no per-token objects to trim)."""
    pieces = [([line + "\n" for line in doc.split("\n") if line.strip()], True)
              for doc in documents[:40]]
    pieces = [p for p in pieces if p[0]]
    whole_flat, whole_lengths = LineEncoder(tokenizer_text, 0).encode_pieces(pieces)
    calls = []
    monkeypatch.setattr(encoding, "ENCODE_BATCH_CHARS", 200)
    monkeypatch.setattr(memory, "release_free_memory", lambda above: calls.append(above))
    plan = dataclasses.replace(MemoryPlan.build(parse_memory("4GB"), 2, 3, 4096, "/tmp/x"),
                               serial_tokenizer=serial)
    for bos in (0, None):  # joined by the marker, and one input per line
        encoder = LineEncoder(tokenizer_text, bos, serial=plan.serial_tokenizer,
                              after_batch=plan.trim_heap, cached=False)
        flat, lengths = encoder.encode_pieces(pieces)
        assert flat.tolist() == whole_flat.tolist() and lengths.tolist() == whole_lengths.tolist()
    assert len(calls) > 20 and set(calls) == {plan.trim_above}  # trim checked after each batch
