"""Tokenizer training on hostile input (issue 26): pieces capped so that training time is
linear in the text, normal text's tokenizer unchanged, the vocabulary bounded, and the
trainer run in a child process (see tests/test_tokenizer_signals.py for the signals)."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tokenizers import pre_tokenizers

from streamsolve.text.tokenizer import (MAX_PIECE_CHARS, MAX_VOCAB_SIZE, TokenizerError,
                                        train_bpe, training_pieces)
from streamsolve.text.training_process import train_bpe_in_subprocess

from ..conftest import SHARED_CORPORA, pydoc_documents
from ..deploy_helpers import child_env, wait_for
from ..test_cli import run_cli


def letters(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=n))


def pre_token_lengths(text: str) -> list[int]:
    """Characters of each piece the byte-level pre-tokenizer makes of ``text``."""
    splits = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
    return [end - start for _, (start, end) in splits]


def test_long_pre_tokens_are_cut_and_nothing_is_lost():
    line = "say " + letters(1000) + " then 12345" + "7" * 600 + "!!" + "-" * 300 + " end\n"
    pieces = list(training_pieces([line, "short line\n"]))
    assert "".join(pieces) == line + "short line\n"
    assert max(n for p in pieces for n in pre_token_lengths(p)) <= MAX_PIECE_CHARS
    assert "short line\n" in pieces  # a line without long pieces is passed on whole


def normal_text() -> list[str]:
    """Real text of several kinds: English prose, reStructuredText, Perl docs, Python
    source and docs, CJK."""
    texts = ["\n\n".join(pydoc_documents())]
    for name in ("kjv.txt.gz", "bench/python-doc.txt.gz", "bench/perl-doc.txt.gz"):
        path = SHARED_CORPORA / name
        if path.exists():
            texts.append(gzip.open(path, "rt").read(300_000))
    try:
        import test
        texts += [p.read_text() for p in (Path(test.__file__).parent / "cjkencodings").glob(
            "*-utf8.txt")]
    except ImportError:
        pass
    return [line for text in texts for line in text.splitlines(keepends=True)]


def test_the_cap_leaves_the_tokenizer_of_normal_text_unchanged():
    """Normal text has no pre-token anywhere near the cap: the same merges, the same ids."""
    lines = normal_text()
    assert max(n for line in lines for n in pre_token_lengths(line)) <= MAX_PIECE_CHARS
    capped = train_bpe(lines, 1000)
    uncapped = train_bpe(lines, 1000, max_piece_chars=None)
    assert capped.to_str() == uncapped.to_str()


def test_training_on_a_whitespace_free_line_is_linear():
    """A 400 KB line of letters: about 60 CPU s before (quadratic), about 1 s now; run in a
    child so the old behaviour shows as a timeout."""
    code = ("import random, time\n"
            "from streamsolve.text.tokenizer import train_bpe\n"
            "rng = random.Random(0)\n"
            "line = ''.join(rng.choices('abcdefghijklmnopqrstuvwxyz', k=400_000))\n"
            "started = time.process_time()\n"
            "train_bpe([line + '\\n'], 8192)\n"
            "print(time.process_time() - started)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code], env=child_env(), timeout=30,
                              capture_output=True, text=True, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("training on a 400 KB line took over 30 s")
    assert float(done.stdout) < 5.0


def test_training_in_a_subprocess_gives_the_same_tokenizer():
    lines = [line + "\n" for doc in pydoc_documents()[:60] for line in doc.split("\n")]
    lines.append(letters(5000) + "\n")
    assert train_bpe_in_subprocess(lines, 600).to_str() == train_bpe(lines, 600).to_str()


def test_vocab_size_above_the_hard_cap_is_refused_before_training():
    with pytest.raises(TokenizerError, match=f"at most {MAX_VOCAB_SIZE} "):
        train_bpe(iter(()), MAX_VOCAB_SIZE + 1)


def test_vocab_size_of_a_billion_is_one_line_exit_2(tmp_path):
    """It aborted inside the Rust trainer (SIGABRT), leaving the store's lock behind."""
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join(pydoc_documents()[:10]) + "\n")
    done = subprocess.run([sys.executable, "-m", "streamsolve", "solve", str(corpus), "--store",
                           str(tmp_path / "s.zarr"), "--vocab-size", "1000000000"],
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()[-1:]
    assert line.startswith("streamsolve solve: error: --vocab-size 1000000000 is above")
    assert "Traceback" not in done.stderr and "panicked" not in done.stderr
    assert not (tmp_path / "s.zarr.lock").exists() and not (tmp_path / "s.zarr").exists()


def test_vocab_size_above_the_memory_plan_is_refused(capsys, tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("\n\n".join(pydoc_documents()[:10]) + "\n")
    code, _, err = run_cli(capsys, "count", corpus, "--store", tmp_path / "s.zarr",
                           "--vocab-size", 4_000_000, "--memory", "400MB")
    assert code == 2
    (line,) = err.strip().splitlines()[-1:]
    assert "--vocab-size 4000000" in line and "--memory 400MB" in line
    assert not (tmp_path / "s.zarr.lock").exists() and not (tmp_path / "s.zarr").exists()


def test_the_trained_tokenizer_is_valid_json_with_dense_ids():
    lines = [line + "\n" for doc in pydoc_documents()[:20] for line in doc.split("\n")]
    spec = json.loads(train_bpe_in_subprocess(lines, 400).to_str())
    ids = sorted(spec["model"]["vocab"].values())
    assert ids == list(range(len(ids)))


def test_the_trainer_process_exits_when_its_parent_is_killed(tmp_path):
    """SIGKILL leaves no unwinding to the parent: the child notices and exits by itself."""
    code = ("import random\n"
            "from streamsolve.text.training_process import train_bpe_in_subprocess\n"
            "line = ''.join(random.Random(0).choices('abcdefghij', k=3_000_000))\n"
            "train_bpe_in_subprocess([line + '\\n'], 8192)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], env=child_env())
    try:
        wait_for(lambda: psutil.Process(parent.pid).children(), 60, "the trainer process")
        (child,) = psutil.Process(parent.pid).children()
        parent.kill()
        parent.wait()
        child.wait(timeout=5)  # psutil.TimeoutExpired if it outlives its parent
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_failing_trainer_process_is_one_line():
    """The child's failure (here a line that is not a string: a TypeError in the child) is
    one line ending with the last line of the child's stderr."""
    lines = iter(["text\n", 12])
    with pytest.raises(TokenizerError, match="training the tokenizer failed: the trainer "
                                             "process exited with status 1: .*"):
        train_bpe_in_subprocess(lines, 300)
