"""A loaded ``tokenizer.json`` is checked before use (issue 26): ids unique, dense, within
the hard cap and the memory plan; each failure one line naming the file, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from streamsolve.text.tokenizer import (MAX_VOCAB_SIZE, TokenizerError, load_tokenizer,
                                        validate_tokenizer_json)

from ..conftest import pydoc_documents
from ..deploy_helpers import child_env
from ..test_cli import run_cli


def word_level(vocab: dict) -> dict:
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = vocab
    return spec


def write(tmp_path, spec: dict, name: str = "tokenizer.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(pydoc_documents()[:5]) + "\n")
    return str(path)


def assert_refused(capsys, tmp_path, corpus, tokenizer, *words, extra=()):
    code, _, err = run_cli(capsys, "count", corpus, "--store", tmp_path / "s.zarr",
                           "--tokenizer", tokenizer, *extra)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("streamsolve count: error: ") and tokenizer in line
    for word in words:
        assert word in line
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.lock").exists()


def test_equal_ids_in_a_bpe_vocabulary(capsys, tmp_path, corpus, tokenizer_text):
    """It failed with a traceback from inside the tokenizers library."""
    spec = json.loads(tokenizer_text)
    vocab = spec["model"]["vocab"]
    first, second = list(vocab)[300:302]
    vocab[first] = vocab[second]
    assert_refused(capsys, tmp_path, corpus, write(tmp_path, spec), "id", repr(first),
                   repr(second))


def test_an_added_token_on_the_id_of_another_token(capsys, tmp_path, corpus):
    spec = word_level({"[UNK]": 0, "a": 1, "b": 2})
    spec["added_tokens"] = [{"id": 2, "content": "<s>", "single_word": False, "lstrip": False,
                             "rstrip": False, "normalized": False, "special": True}]
    assert_refused(capsys, tmp_path, corpus, write(tmp_path, spec), "id 2", "'<s>'", "'b'")


def test_ids_near_five_hundred_million(tmp_path, corpus):
    """Three tokens, one with id 5e8: it allocated arrays of 5e8 ids (16.5 GB against a
    269 MB plan). Run with a 4 GB address-space limit so the old behaviour fails fast."""
    path = write(tmp_path, word_level({"[UNK]": 0, "a": 1, "b": 500_000_000}))
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "from streamsolve.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", code, "count", corpus, "--store",
                           str(tmp_path / "s.zarr"), "--tokenizer", path, "--memory", "269MB"],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    line = done.stderr.strip().splitlines()[-1]
    assert path in line and "500000000" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "s.zarr.lock").exists()


def test_a_vocabulary_beyond_the_memory_plan(capsys, tmp_path, corpus):
    """Dense ids, but more than a 32 MB budget holds the per-token arrays of."""
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 70_000)}}
    assert_refused(capsys, tmp_path, corpus, write(tmp_path, word_level(vocab)), "70000",
                   "--memory 32MB", extra=("--memory", "32MB", "--force-memory"))


def test_valid_tokenizers_pass(tmp_path, tokenizer_text):
    """Real layouts: a trained BPE; GPT-2's end-of-text token both in the vocabulary and an
    added token (same id); a Unigram model (ids are positions); WordPiece; a few unused ids."""
    validate_tokenizer_json(tokenizer_text, "bpe")
    spec = json.loads(tokenizer_text)
    spec["added_tokens"].append({"id": 5, "content": list(spec["model"]["vocab"])[5],
                                 "single_word": False, "lstrip": False, "rstrip": False,
                                 "normalized": False, "special": True})
    validate_tokenizer_json(json.dumps(spec), "bpe with added")
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0)], 0))
    validate_tokenizer_json(unigram.to_str(), "unigram")
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    validate_tokenizer_json(wordpiece.to_str(), "wordpiece")
    holes = word_level({"[UNK]": 0, "a": 1, "b": 7})
    validate_tokenizer_json(json.dumps(holes), "holes")
    path = write(tmp_path, holes)
    assert load_tokenizer(path).get_vocab_size() == 3


@pytest.mark.parametrize("vocab,words", [
    ({"[UNK]": 0, "a": -1}, ["negative", "'a'"]),
    ({"[UNK]": 0, "a": "1"}, ["not an integer", "'a'"]),
    ({"[UNK]": 0, "a": MAX_VOCAB_SIZE}, [str(MAX_VOCAB_SIZE)]),
    ({"[UNK]": 0, "a": 1, "b": 50_000}, ["50000", "3 tokens"]),
])
def test_malformed_ids(vocab, words):
    with pytest.raises(TokenizerError) as caught:
        validate_tokenizer_json(json.dumps(word_level(vocab)), "my/tokenizer.json")
    message = str(caught.value)
    assert "\n" not in message and "my/tokenizer.json" in message
    for word in words:
        assert word in message
