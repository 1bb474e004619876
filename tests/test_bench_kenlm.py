"""The KenLM benchmark's pure parts (`bench.kenlm_tools`), without KenLM: the token-file
writer, reading ``query -v word -v sentence`` output, the bits-per-byte arithmetic and the
one-line skip when the binaries are missing. Fast; the benchmark itself runs with
``python -m bench --only kenlm``."""

from __future__ import annotations

import io
import math
import os
import stat

import numpy as np
import pytest

from bench import common, kenlm, kenlm_tools

#: ``query -v word -v sentence -v summary`` of KenLM (commit 4cb443e) on a 2-gram ARPA for the
#: input "12 7\n7 99 12\n" (99 is not in the model's vocabulary).
QUERY_OUTPUT = (
    "12=3 2 -0.2\t7=4 2 -0.3\t</s>=2 2 -0.1\tTotal: -0.6 OOV: 0\n"
    "7=4 1 -1\t99=0 1 -1.2\t12=3 1 -0.6\t</s>=2 1 -0.7\tTotal: -3.5000002 OOV: 1\n"
    "Perplexity including OOVs:\t3.8522487523630686\n"
    "Perplexity excluding OOVs:\t3.043220137707334\n"
    "OOVs:\t1\n"
    "Tokens:\t7\n")


def test_token_lines_write_one_document_a_line_and_skip_empty_ones():
    docs = [np.array([12, 7], dtype=np.int32), np.array([], dtype=np.int32),
            np.array([7, 99, 12], dtype=np.int64), [0, 5]]
    handle = io.StringIO()
    assert kenlm_tools.write_token_lines(docs, handle) == (3, 7)
    assert handle.getvalue() == "12 7\n7 99 12\n0 5\n"


def test_query_words_are_summed_apart_from_the_sentence_ends():
    score = kenlm_tools.parse_query_words(io.StringIO(QUERY_OUTPUT))
    assert (score.tokens, score.sentences, score.oov) == (5, 2, 1)
    assert math.isclose(score.token_log10, -0.2 - 0.3 - 1 - 1.2 - 0.6)
    assert math.isclose(score.end_log10, -0.1 - 0.7)
    # the sums agree with query's own sentence totals
    assert math.isclose(score.token_log10 + score.end_log10, -0.6 - 3.5000002, rel_tol=1e-6)
    assert math.isclose(score.bits(True), 4.1 * math.log2(10), rel_tol=1e-9)
    assert math.isclose(score.bits(False), 3.3 * math.log2(10), rel_tol=1e-9)


def test_bits_per_byte_of_both_tools_use_the_same_units():
    # a token of probability 1/2 costs one bit, whether given as log10 (KenLM) or nats
    ken = kenlm_tools.KenlmScore(token_log10=4 * math.log10(0.5), tokens=4)
    assert math.isclose(kenlm_tools.bits_per_byte(ken.bits(False), 8), 0.5)
    ours = kenlm_tools.streamsolve_bits(cross_entropy_nats=math.log(2), tokens=4)
    assert math.isclose(kenlm_tools.bits_per_byte(ours, 8), 0.5)


def test_arpa_header_and_the_unk_share():
    header = "\n\\data\\\nngram 1=5\nngram 2=3\n\n\\1-grams:\n-1.0\t<unk>\t0\n"
    assert kenlm_tools.arpa_unigrams(io.StringIO(header)) == 5
    with pytest.raises(ValueError, match="no 'ngram 1=' line"):
        kenlm_tools.arpa_unigrams(io.StringIO("\\data\\\n\\1-grams:\nngram 1=5\n"))
    # 5 unigrams = 2 tokens + <unk>, <s>, </s>: 8 - 2 = 6 unseen tokens share <unk>
    assert math.isclose(kenlm_tools.unk_share_bits(3, 8, 5), 3 * math.log2(6))
    assert kenlm_tools.unk_share_bits(0, 8, 5) == 0.0


def test_spread_shows_min_max_and_median():
    assert kenlm_tools.spread([3.0, 1.0, 2.0]) == "1.0-3.0 (median 2.0)"
    assert kenlm_tools.spread([2.5]) == "2.5"


def test_missing_binaries_skip_with_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("KENLM_BIN", str(tmp_path))
    with pytest.raises(common.Skip) as caught:
        kenlm_tools.find_kenlm()
    message = str(caught.value)
    assert "\n" not in message
    assert f"KENLM_BIN={tmp_path} lacks lmplz, build_binary, query" in message
    assert "set KENLM_BIN" in message
    monkeypatch.delenv("KENLM_BIN")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(common.Skip, match="lmplz is not on PATH and KENLM_BIN is not set"):
        kenlm.run(False)


def test_binaries_are_found_in_kenlm_bin(tmp_path, monkeypatch):
    for name in kenlm_tools.BINARIES:
        path = tmp_path / name
        path.write_text("#!/bin/sh\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KENLM_BIN", str(tmp_path))
    assert kenlm_tools.find_kenlm() == tmp_path
    monkeypatch.delenv("KENLM_BIN")
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    assert kenlm_tools.find_kenlm() == tmp_path


def test_measured_run_charges_the_child_tree_cpu(tmp_path):
    # a shell whose child burns CPU: the grandchild's seconds count too
    burn = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"
    measured = kenlm_tools.run_measured(["sh", "-c", f"sh -c '{burn}'; echo done"],
                                        tmp_path / "log", stdout=tmp_path / "out")
    assert (tmp_path / "out").read_text() == "done\n"
    assert measured.cpu > 0.02
    assert measured.cpu <= measured.wall + 0.05  # one process at a time
    assert measured.peak > 0
    # a child's peak is its own, not this (larger) process's: Linux carries the parent's
    # high-water mark into a spawned child's ru_maxrss, so that must not be read as its peak
    ballast = bytearray(300 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert kenlm_tools.run_measured(["sh", "-c", "true"], tmp_path / "log").peak < 100 << 20
    del ballast
    with pytest.raises(RuntimeError, match="failed \\(3\\)"):
        kenlm_tools.run_measured(["sh", "-c", "exit 3"], tmp_path / "log")


def test_slices_keep_blank_lines_and_every_byte_is_in_the_denominator(tmp_path, tokenizer_text):
    import gzip

    text = "First line.\nsame document\n\n\n  \nSecond document.\n\nThird one\n"
    shard = tmp_path / "shard.txt.gz"
    shard.write_bytes(gzip.compress(text.encode()))
    path = kenlm.write_slice(str(shard), 1 << 20, tmp_path / "slice.txt")
    assert path.read_text() == text
    tokens_file = tmp_path / "slice.tokens"
    encoded = kenlm.encode([path], kenlm.token_source(tokenizer_text), tokens_file)
    assert encoded["bytes"] == len(text.encode())
    lines = tokens_file.read_text().splitlines()
    assert len(lines) == len(encoded["docs"]) == 3  # one KenLM sentence per document
    assert [len(line.split()) for line in lines] == [d.size for d in encoded["docs"]]
    assert sum(len(line.split()) for line in lines) == encoded["tokens"]


def test_the_concatenated_corpus_follows_its_parts(tmp_path):
    # a cached concatenation of other shards (an earlier quick run) must not be reused
    parts = []
    for i, text in enumerate(["one\n", "two two\n", "three\n"]):
        parts.append(tmp_path / f"p{i}.txt")
        parts[-1].write_text(text)
    target = tmp_path / "corpus.txt"
    kenlm_tools.concatenate(parts[:1], target)
    assert target.read_text() == "one\n"
    kenlm_tools.concatenate(parts, target)
    assert target.read_text() == "one\ntwo two\nthree\n"
