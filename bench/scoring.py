"""Benchmark: ``streamsolve eval`` tokens/s over ``streamsolve count`` tokens/s, side by side.

A model is counted and finalized on training shards (gcide + wordnet), and the held-out text
(python-doc, another source) is then both *counted* (into a scratch store, same tokenizer and
radius) and *evaluated* (``streamsolve eval``) by separate processes, one after the other in
this run. Both figures are whole-process tokens/s (start-up, reading and tokenizing
included), so the ratio says how the cost of scoring text compares with the cost of
counting it. Targets (issue 14): >= 1.0 at R = 1 and >= 0.25 at R = 3. Rows for R = 1 and
R = 3 at V = 8192 (a BPE trained on the bench corpus) and, when the ``anthropic`` wheel's
tokenizer is installed, V = 65k. Peak RSS is of each process tree.
"""

from __future__ import annotations

import shutil

from . import common

TRAIN = {"quick": ["gcide-00.txt.gz", "wordnet-00.txt.gz"],
         "full": ["gcide-00.txt.gz", "gcide-01.txt.gz", "wordnet-00.txt.gz", "wordnet-01.txt.gz"]}
HELDOUT = ["python-doc.txt.gz"]
TARGETS = {1: 1.0, 3: 0.25}


def run_cli(*args: str, name: str) -> tuple[dict, float, int]:
    """``streamsolve ARGS --json`` in a subprocess: (its JSON, wall seconds, peak RSS)."""
    return common.run_streamsolve([*args, "--json"], f"scoring-{name}")


def run(full: bool) -> str:
    mode = "full" if full else "quick"
    train = common.shards(TRAIN[mode])
    heldout = common.shards(HELDOUT)
    if len(train) != len(TRAIN[mode]) or not heldout:
        raise common.Skip("bench shards gcide/wordnet/python-doc not found")
    tokenizers = [("8192", common.bench_tokenizer(8192))]
    claude = common.anthropic_tokenizer()
    if claude is not None:
        tokenizers.append(("65k (anthropic)", claude))
    work = common.WORK / "scoring"
    rows, notes = [], []
    for vocab, tokenizer in tokenizers:
        for radius in (1, 3):
            tag = f"v{vocab.split()[0]}-r{radius}"
            store, scratch = work / f"{tag}.zarr", work / f"{tag}-heldout.zarr"
            for path in (store, scratch):
                if path.exists():
                    shutil.rmtree(path)
            common_args = ["--tokenizer", str(tokenizer), "--radius", str(radius)]
            counted, _, _ = run_cli("count", *train, "--store", str(store), *common_args,
                                    name=f"{tag}-train")
            _, fin_s, fin_rss = run_cli("finalize", str(store), name=f"{tag}-finalize")
            held, count_s, count_rss = run_cli("count", *heldout, "--store", str(scratch),
                                               *common_args, name=f"{tag}-count")
            ev, eval_s, eval_rss = run_cli("eval", str(store), *heldout, name=f"{tag}-eval")
            count_rate = held["new_tokens"] / count_s
            eval_rate = ev["tokens"] / eval_s
            ratio = eval_rate / count_rate
            target = TARGETS[radius]
            rows.append([vocab, radius, f"{counted['new_tokens']:,}", f"{fin_s:.1f}",
                         common.mib(fin_rss), f"{held['new_tokens']:,}", f"{count_rate:,.0f}",
                         common.mib(count_rss), f"{eval_rate:,.0f}", common.mib(eval_rss),
                         f"{ev['perplexity']:.1f}", f"**{ratio:.2f}**",
                         f">= {target} {'met' if ratio >= target else 'MISSED'}"])
            shutil.rmtree(scratch, ignore_errors=True)
    notes += [common.machine(),
              f"training shards: {', '.join(TRAIN[mode])}; held-out: {', '.join(HELDOUT)} "
              "(another source); each figure is one subprocess, whole-process wall time",
              "count tokens/s: `streamsolve count HELDOUT --store scratch` (same tokenizer, R); "
              "eval tokens/s: `streamsolve eval STORE HELDOUT` (uncalibrated weights, "
              "read lazily row block by row block)"]
    return common.table(
        "scoring: eval tokens/s over count tokens/s on the same held-out text",
        ["V", "R", "train tokens", "finalize s", "finalize RSS", "held-out tokens",
         "count tok/s", "count RSS", "eval tok/s", "eval RSS", "eval ppl", "eval/count",
         "target"], rows, notes)
