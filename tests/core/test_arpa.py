"""The ARPA writer, checked with real readers: KenLM's Python module scores our files as our
model does, and KenLM's ``lmplz`` builds the same model from the same token sequences."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from streamsolve.core.arpa import arpa_text
from streamsolve.core.ngram_counts import NgramConfig, count_ngram_documents
from streamsolve.core.ngram_kneser_ney import estimate_kneser_ney

from .test_ngram_kneser_ney import ReferenceKneserNey, zipf_documents

BOS, EOS = 0, 1


def write_arpa(model, path: Path, **options) -> Path:
    path.write_text("".join(arpa_text(model, **options)), encoding="utf-8")
    return path


def parse_arpa(path: Path) -> dict:
    """{n-gram text: (log10 prob, log10 back-off or 0)} of an ARPA file, and the header."""
    grams, header, order = {}, {}, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.fullmatch(r"ngram (\d+)=(\d+)", line):
            header[int(match[1])] = int(match[2])
        elif match := re.fullmatch(r"\\(\d+)-grams:", line):
            order = int(match[1])
        elif order and line and not line.startswith("\\"):
            fields = line.split("\t")
            grams[fields[1]] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
    assert header == dict(Counter(len(g.split()) for g in grams)), "header counts the lines"
    return grams


def our_log10(model, document) -> np.ndarray:
    N = model.config.order
    padded = [BOS] * (N - 1) + list(document)
    contexts = np.array([padded[t - N + 1:t][::-1] for t in range(N - 1, len(padded))])
    return model.log_probs(contexts, np.array(document)) / np.log(10)


@pytest.mark.parametrize("with_end", [False, True])
def test_kenlm_module_scores_the_file_as_the_model(tmp_path, with_end):
    kenlm = pytest.importorskip("kenlm", reason="KenLM's Python module is not installed")
    sentences = zipf_documents(5, 900, 30, low=2)
    docs = [s + [EOS] for s in sentences] if with_end else sentences
    model = estimate_kneser_ney(count_ngram_documents(docs[:800], NgramConfig(30, 4, BOS)))
    path = write_arpa(model, tmp_path / "model.arpa", eos_id=EOS if with_end else None)
    reader = kenlm.Model(str(path))
    assert reader.order == 4
    for doc in docs[800:]:
        words = " ".join(str(w) for w in (doc[:-1] if with_end else doc))
        theirs = [score for score, _, _ in reader.full_scores(words, bos=True, eos=with_end)]
        np.testing.assert_allclose(theirs, our_log10(model, doc), atol=1e-5, rtol=0)


def test_words_and_markers(tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="KenLM's Python module is not installed")
    docs = [[1, 2, 3, 2], [3, 3, 1], [2, 1, 2, 3, 3]] * 5
    model = estimate_kneser_ney(count_ngram_documents(docs, NgramConfig(4, 3, BOS)))
    words = ["<BOS>", "x", "y", "z"]
    grams = parse_arpa(write_arpa(model, tmp_path / "w.arpa", words=words))
    assert grams["<s>"][0] == 0.0 and grams["</s>"][0] == -99.0
    assert grams["<unk>"][0] == pytest.approx(np.log10(model.unigram_backoff / 4))
    assert "<s> x" in grams and not any(g.startswith("<s> <s>") for g in grams)
    reader = kenlm.Model(str(tmp_path / "w.arpa"))
    scores = [s for s, _, _ in reader.full_scores("x y z", bos=True, eos=False)]
    np.testing.assert_allclose(scores, our_log10(model, [1, 2, 3]), atol=1e-5)
    for bad, message in [(["a", "b c", "d", "e"], "'b c' cannot be an ARPA word"),
                         (["a", "b", "</s>", "d"], "'</s>' cannot be"),
                         (["a", "b", "b", "c"], "not distinct"), (["a"], "need 4 words")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            "".join(arpa_text(model, words=bad))
    with pytest.raises(ValueError, match="eos_id 0 must be an id other than BOS"):
        "".join(arpa_text(model, eos_id=0))


# ------------------------------------------------------------------ KenLM's lmplz itself

def kenlm_bin() -> Path:
    folder = os.environ.get("KENLM_BIN")
    if folder and os.access(Path(folder) / "lmplz", os.X_OK):
        return Path(folder)
    found = shutil.which("lmplz")
    if found is None:
        pytest.skip("KenLM's lmplz is not on PATH and KENLM_BIN is not set (its build/bin)")
    return Path(found).parent


def lmplz_discounts(stderr: str) -> dict:
    """{order: (D1, D2, D3+)} from lmplz's 'Statistics' lines."""
    found = re.findall(r"^(\d+) \d+(?:/\d+)? D1=(\S+) D2=(\S+) D3\+=(\S+)$", stderr, re.M)
    return {int(k): tuple(map(float, d)) for k, *d in found}


def lmplz_statistics_quirk(reference: ReferenceKneserNey, sentences) -> dict:
    """The counts-of-counts lmplz estimates its discounts from: ours, except that the last
    n-gram of each order below N in lmplz's suffix order (by its own word ids, assigned in
    order of first appearance after <unk>, <s>, </s>) enters them with its raw count —
    `adjust_counts.cc` flushes the n-grams still open at the end of its stream with
    ``actual_counts``, not the adjusted counts."""
    N = reference.N
    kenlm_id = {BOS: 1, EOS: 2}
    for sentence in sentences:
        for word in sentence:
            kenlm_id.setdefault(word, len(kenlm_id) + 1)
    grams, raw = set(), Counter()
    for sentence in sentences:
        padded = [BOS] * (N - 1) + sentence + [EOS]
        for t in range(N - 1, len(padded)):
            grams.add(tuple(padded[t - N + 1:t + 1]))
            for k in range(1, N):
                raw[tuple(padded[t - k + 1:t + 1])] += 1
    last = max(grams, key=lambda g: [kenlm_id[w] for w in reversed(g)])
    quirked = {}
    for k in range(1, N + 1):
        adjusted = dict(reference.adjusted[k])
        if k < N:
            key = (last[N - k:-1], last[-1])
            if key in adjusted:
                adjusted[key] = raw[last[N - k:]]
        quirked[k] = Counter(adjusted.values())
    return quirked


@pytest.mark.parametrize("N", [2, 3, 4, 5])
def test_equals_lmplz(tmp_path, N):
    """Every n-gram of ``lmplz -o N`` on the same sentences, with the same log10 probability
    and back-off (to KenLM's float32 rounding), once lmplz's discount quirk is accounted for."""
    folder = kenlm_bin()
    V = 40
    sentences = zipf_documents(N, 3000, V, low=2)
    assert {w for s in sentences for w in s} == set(range(2, V)), "every word id is seen"
    text = tmp_path / "corpus.txt"
    text.write_text("".join(" ".join(map(str, s)) + "\n" for s in sentences))
    run = subprocess.run([str(folder / "lmplz"), "-o", str(N), "-S", "64M", "-T", str(tmp_path),
                          "--discount_fallback", "--text", str(text),
                          "--arpa", str(tmp_path / "lmplz.arpa")],
                         capture_output=True, text=True, check=True)
    docs = [s + [EOS] for s in sentences]     # KenLM predicts </s> after each sentence
    counts = count_ngram_documents(docs, NgramConfig(V, N, BOS))
    reference = ReferenceKneserNey(docs, N, V, BOS)
    quirked = {k: reference.estimate(c)
               for k, c in lmplz_statistics_quirk(reference, sentences).items()}
    reported = lmplz_discounts(run.stderr)
    for k in range(1, N + 1):
        assert reported[k] == pytest.approx(quirked[k], abs=2e-5), f"order {k}"
    ours = estimate_kneser_ney(counts)
    for k in range(1, N + 1):   # the quirk moves one n-gram per order at most
        assert ours.discounts[k - 1] == pytest.approx(quirked[k], abs=0.05)
    model = estimate_kneser_ney(counts, discounts=[quirked[k] for k in range(1, N + 1)])
    theirs = parse_arpa(tmp_path / "lmplz.arpa")
    mine = parse_arpa(write_arpa(model, tmp_path / "ours.arpa", eos_id=EOS))
    assert set(mine) == set(theirs)
    keys = sorted(theirs)
    np.testing.assert_allclose([mine[g][0] for g in keys], [theirs[g][0] for g in keys],
                               atol=1e-5, rtol=0)
    np.testing.assert_allclose([mine[g][1] for g in keys], [theirs[g][1] for g in keys],
                               atol=1e-5, rtol=0)
