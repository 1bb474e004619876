"""Hold-out on corpora of long lines (a chapter or a whole book per line) holds out text."""

from __future__ import annotations

from streamsolve import api
from streamsolve.text.holdout import HoldOut, RunSplitter


def _split_all(holdout, lines):
    splitter = RunSplitter(holdout, "book.txt")
    return splitter.split([(lines, True)])


def test_a_long_line_is_split_by_position_and_rejoins_exactly(documents):
    book = " ".join(doc.replace("\n", " ") for doc in documents) + "\n"  # one line, ~100 kB
    holdout = HoldOut(fraction=0.3, group_bytes=2048)
    train, held, _ = _split_all(holdout, [book])
    assert held and train
    held_bytes = sum(len(line.encode()) for lines, _ in held for line in lines)
    assert 0.15 < held_bytes / len(book.encode()) < 0.45
    # each piece at most group_bytes unless joined with its neighbours on the same side
    pieces = [lines[0] for lines, _ in train + held]
    assert all(len(lines) == 1 for lines, _ in train + held)
    pos = 0
    while pieces:  # the pieces tile the line, in some order
        piece = next(p for p in pieces if book.startswith(p, pos))
        pieces.remove(piece)
        pos += len(piece)
    assert pos == len(book)
    assert all(starts for _, starts in held)  # a held-out piece starts a fresh document


def test_short_lines_keep_the_64_line_runs(documents):
    lines = [line + "\n" for doc in documents for line in doc.split("\n")][:2000]
    old_style = [(g // 64) for g in range(len(lines))]
    holdout = HoldOut(fraction=0.3, group_bytes=1 << 30)
    train, held, _ = _split_all(holdout, lines)
    expected_held = [line for line, g in zip(lines, old_style) if holdout.is_heldout("book.txt", g)]
    assert [line for piece, _ in held for line in piece] == expected_held


def test_solve_on_one_chapter_per_line_shards_evaluates_on_held_out_text(
        tmp_path, documents, tokenizer_file):
    corpus = tmp_path / "chapters"
    corpus.mkdir()
    for s in range(2):  # two shards, one document ("chapter") per line, ~25 lines each
        chapters = [doc.replace("\n", " ") for doc in documents[s::2]]
        (corpus / f"book{s}.txt").write_text("\n".join(chapters) + "\n")
    summary = api.solve(str(corpus), str(tmp_path / "m.zarr"), tokenizer=tokenizer_file,
                        radius=1, heldout_fraction=0.1)
    assert summary["heldout_documents"] > 0 and summary["heldout_tokens"] > 0
    # ~50 kB of text at 10%: runs of 1 KiB (the smallest), so about 5 kB are held out
    assert summary["heldout_bytes"] > 0 and "1,024 bytes" in summary["heldout"]
    assert summary["heldout_perplexity"] > 1


def test_runs_shrink_with_the_corpus_so_enough_is_held_out():
    assert HoldOut.for_text(0.05, 10**9).group_bytes == 16384
    assert HoldOut.for_text(0.05, 10**7).group_bytes == 10**7 * 0.05 // 64
    assert HoldOut.for_text(0.05, 10**4).group_bytes == 1024
    assert HoldOut.for_text(0.0, 10**4).fraction == 0
