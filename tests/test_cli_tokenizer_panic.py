"""A tokenizer that panics (a Rust panic escaping from ``tokenizers``): one line naming the
tokenizer and the shard, exit 2, no store written (issue 16)."""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from streamsolve.text.encoding import LineEncoder
from streamsolve.text.tokenizer import TokenizerError, tokenizer_hash
from tests.test_hostile_cli import _fails_in_one_line

#: ``(a|a)+b`` backtracks exponentially on ``aaa...c``: Oniguruma stops at its retry limit,
#: and ``tokenizers`` panics.
CATASTROPHIC = r"(a|a)+b"
CRAFTED_LINE = "a" * 1000 + "c\n"


@pytest.fixture
def panicking_tokenizer(tmp_path) -> tuple[str, str]:
    vocab = {"<|doc|>": 0, "a": 1, "b": 2, "c": 3, "[UNK]": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.add_special_tokens(["<|doc|>"])
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(CATASTROPHIC), behavior="isolated")
    path = tmp_path / "tokenizer.json"
    text = tok.to_str()
    path.write_text(text, encoding="utf-8")
    return str(path), text


def test_line_encoder_turns_the_panic_into_a_tokenizer_error(panicking_tokenizer):
    _, text = panicking_tokenizer
    encoder = LineEncoder(text, 0)
    # it works ("ab" is split off whole, an unknown word, and so is the newline)...
    assert encoder.encode_pieces([(["ab\n"], True)])[0].tolist() == [4, 4]
    with pytest.raises(TokenizerError, match="retry-limit") as info:
        encoder.encode_pieces([(["ab\n", CRAFTED_LINE], True)])  # ...until the crafted line
    assert tokenizer_hash(text)[:12] in str(info.value)


def test_count_with_a_panicking_tokenizer(capsys, tmp_path, panicking_tokenizer):
    path, text = panicking_tokenizer
    shard = tmp_path / "crafted.txt"
    shard.write_text("ab ab\n\n" + CRAFTED_LINE, encoding="utf-8")
    store = tmp_path / "m.zarr"
    err = _fails_in_one_line(capsys, "count", shard, "--store", store, "--tokenizer", path,
                             "--radius", "1", message=f"shard {shard}")
    assert "WordLevel tokenizer (sha256 " in err and "retry-limit" in err
    assert not store.exists()
