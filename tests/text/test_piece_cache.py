"""The exact piece cache: the ids of every line are the tokenizer's own, on real and hostile text,
for the tokenizers it supports; the others stay on the plain path."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from streamsolve.text.encoding import LineEncoder, line_tokenizer
from streamsolve.text.piece_cache import PieceCache, cache_supported, encode_with_cache
from streamsolve.text.tokenizer import train_bpe
from tests.conftest import SHARED_CORPORA as CORPORA


#: Characters the regex classes could get wrong: every ASCII character (C0 controls,
#: \x1c-\x1f, which Python's \s counts and the tokenizer's does not), non-ASCII spaces and
#: line separators, letters of several scripts, digits of other scripts, combining marks,
#: emoji (with joiners and variation selectors), the replacement character, private use.
HOSTILE = ([chr(c) for c in range(128)] + list(
    "\u00a0\u0085\u2028\u2029\u3000\u2009\u200b\ufeff\u00e9\u00c6\u0131\u017f\u212a"
    "\u0391\u03c9\u0416\u05d0\u0627\u0915\u0e01\u4e2d\u65e5\u3042\uac00\u0660\u0966\u2460"
    "\u00bd\u2167\u0301\u0308\u20dd\u093f\U0001f600\U0001f44d\U0001f3fd\u200d\ufe0f\ufffd"
    "\ue000\u2019\u2014\u00ab\u00bb") + ["'s", "'ll", "'S", "   ", "\t\t", "1234567", "\r\n",
                                         " \n", "<|doc|>", "<EOT>", "<|do"])


def per_line_ids(tokenizer: Tokenizer, lines: list[str]) -> list[int]:
    return [i for line in lines for i in tokenizer.encode(line, add_special_tokens=False).ids]


def hostile_lines(rng: random.Random, n_lines: int) -> list[str]:
    lines = []
    for _ in range(n_lines):
        size = rng.choice([1, 3, 10, 40, 300])
        line = "".join(rng.choice(HOSTILE + ["a", "b", " ", "x", "9"] * 8) for _ in range(size))
        lines.append(line.replace("\n", "") + ("\n" if rng.random() < 0.9 else ""))
    lines.append("z" * 5000 + "\n")  # one long piece
    lines.append("7" * 3000 + " " * 2000 + "\u00e9" * 1000 + "\n")
    return lines


@pytest.fixture(scope="module")
def bpe_text(documents) -> str:
    """A byte-level BPE with an added special token, trained on real text."""
    return train_bpe([line + "\n" for doc in documents for line in doc.split("\n")],
                     1000).to_str()


def anthropic_text() -> str | None:
    try:
        import anthropic
    except ImportError:
        return None
    path = Path(anthropic.__file__).parent / "tokenizer.json"
    return path.read_text(encoding="utf-8") if path.exists() else None


def supported_texts(bpe_text: str) -> list[str]:
    texts = [bpe_text]
    spec = json.loads(bpe_text)
    spec["normalizer"] = {"type": "NFKC"}
    texts.append(json.dumps(spec))
    if anthropic_text() is not None:
        texts.append(anthropic_text())
    return texts


def encoded(encoder: LineEncoder, lines: list[str]) -> list[int]:
    """Ids of ``lines`` as one piece through the encoder (what counting does)."""
    flat, lengths = encoder.encode_pieces([(lines, True)])
    assert lengths.tolist() == [flat.size]
    return flat.tolist()


def test_bpe_and_nfkc_and_anthropic_tokenizers_are_supported(bpe_text):
    for text in supported_texts(bpe_text):
        assert cache_supported(json.loads(text))
        assert LineEncoder(text).cache is not None


def test_hostile_text_gives_the_tokenizers_ids(bpe_text):
    rng = random.Random(5)
    for text in supported_texts(bpe_text):
        tokenizer = Tokenizer.from_str(text)
        encoder = LineEncoder(text)
        for _ in range(4):
            lines = hostile_lines(rng, 200)
            assert encoded(encoder, lines) == per_line_ids(tokenizer, lines)


def test_every_ascii_character_between_every_class(bpe_text):
    """Each ASCII character (and a few others) in every neighbourhood of the regex classes."""
    tokenizer = Tokenizer.from_str(bpe_text)
    encoder = LineEncoder(bpe_text)
    around = ["a", "Z", "0", " ", "  ", "\t", "!", "'", "\u00e9", "\u00a0", "\u0301", ""]
    lines = [f"{left}{chr(c)}{right}{chr(c)}\n" for c in range(1, 128) if c != 10
             for left in around for right in around]
    assert encoded(encoder, lines) == per_line_ids(tokenizer, lines)


def test_real_text_gives_the_tokenizers_ids(bpe_text, documents):
    lines = [line + "\n" for doc in documents[:3000] for line in doc.split("\n")]
    shards = sorted((CORPORA / "bench").glob("*.txt.gz"))[:33:4] if CORPORA.exists() else []
    for shard in shards:
        with gzip.open(shard, "rt", encoding="utf-8", errors="replace") as f:
            lines.extend(line for _, line in zip(range(400), f))
    for text in supported_texts(bpe_text):
        tokenizer = Tokenizer.from_str(text)
        assert encoded(LineEncoder(text), lines) == per_line_ids(tokenizer, lines)


def test_a_full_cache_is_emptied_and_stays_exact(bpe_text):
    cache = PieceCache.for_tokenizer(bpe_text, max_pieces=50)
    tokenizer, _ = line_tokenizer(bpe_text)
    reference = Tokenizer.from_str(bpe_text)

    def plain(texts):
        encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
        return (np.array([i for e in encodings for i in e.ids], dtype=np.int64),
                np.array([len(e.ids) for e in encodings], dtype=np.int64))

    rng = random.Random(9)
    for _ in range(5):
        inputs = ["".join(hostile_lines(rng, 20)) for _ in range(3)]
        flat, per_input = encode_with_cache(cache, inputs, plain)
        expected = [reference.encode(x, add_special_tokens=False).ids for x in inputs]
        assert per_input.tolist() == [len(e) for e in expected]
        assert flat.tolist() == [i for e in expected for i in e]
    assert len(cache) <= 50 + 3 * 2000  # bounded: emptied when a batch starts above the cap


def test_unsupported_tokenizers_take_the_plain_path(bpe_text):
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    lowercase = json.loads(bpe_text)
    lowercase["normalizer"] = {"type": "Lowercase"}
    prefix = json.loads(bpe_text)
    prefix["pre_tokenizer"]["add_prefix_space"] = True
    dropout = json.loads(bpe_text)
    dropout["model"]["dropout"] = 0.1
    custom = Tokenizer.from_str(bpe_text)
    custom.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(),
                                                    pre_tokenizers.ByteLevel()])
    custom.normalizer = normalizers.NFC()
    for text in (wordpiece.to_str(), json.dumps(lowercase), json.dumps(prefix),
                 json.dumps(dropout), custom.to_str()):
        assert not cache_supported(json.loads(text))
        assert LineEncoder(text).cache is None
    lines = ["Hello World 42\n", "ab ab\n"]
    assert (encoded(LineEncoder(json.dumps(prefix)), lines)
            == per_line_ids(Tokenizer.from_str(json.dumps(prefix)), lines))


def test_cached_and_plain_encoders_agree_on_pieces_and_documents(bpe_text, documents):
    pieces = [([line + "\n" for line in doc.split("\n")], i % 3 == 0)
              for i, doc in enumerate(documents[:500])]
    pieces.append((["a line cut in the middle wi"], False))
    pieces.append((["a long line the reader cut   ", "  in two\n", "caf\u00e9 next\n", "end wi"], True))
    bos = json.loads(bpe_text)["added_tokens"][0]["id"]
    cached, plain = LineEncoder(bpe_text, bos), LineEncoder(bpe_text, bos, cached=False)
    assert cached.cache is not None and plain.cache is None
    for (a, sa), (b, sb) in zip(cached.encode_documents(pieces), plain.encode_documents(pieces)):
        assert sa == sb and a.tolist() == b.tolist()
