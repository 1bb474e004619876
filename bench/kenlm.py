"""Benchmark "kenlm": streamsolve beside KenLM (``lmplz``, ``build_binary``, ``query``) in one
run, for the performance and n-gram issues (23, 24).

KenLM's binaries come from ``$KENLM_BIN`` (a directory) or PATH; without them the benchmark is
skipped with a one-line reason. Every timed step is a whole process tree: CPU-seconds are user
+ sys of it and its descendants (`os.wait4`), which the
load of a shared machine inflates far less than wall time; wall and the tree's peak resident
memory are shown too. The steps alternate (A B A B ...) for ``$STREAMSOLVE_BENCH_ROUNDS``
rounds (3 full, 1 quick) so both tools see the same load. ``$STREAMSOLVE_BENCH_KENLM_PARTS``
(e.g. ``a`` or ``b,c``; default all) runs some of the parts below.

a. Build cost on raw text: ``lmplz -o 3`` and ``-o 5`` (whitespace words) beside
   ``streamsolve count --radius 3`` (a BPE of 8192 trained once and passed as ``--tokenizer``,
   and separately with the BPE trained by ``count`` itself), in MB of text per CPU-second.
   The shards are decompressed once beforehand and neither tool is charged for it: streamsolve
   counts the decompressed ``.txt`` shards, ``lmplz`` reads their concatenation (the one-off
   ``gzip -dc`` cost is printed so it can be added to both).
b. Scoring cost: ``query`` on ``build_binary`` models of order 2 and 4 built on the BPE tokens
   of the training split beside ``streamsolve eval`` at R = 1 and R = 3 (counted on the same
   training shards, calibrated on the calibration slice), on the same held-out text, in tokens
   per CPU-second. ``query`` reads the token ids already encoded; ``eval`` reads the text, so
   its figure includes BPE encoding, which is also measured alone (`streamsolve.documents`,
   the path ``eval`` reads with) and shown subtracted.
c. Quality on the split of BENCHMARKS.md section 8: KenLM orders 2..5 on the same BPE tokens
   (`kenlm_tools.write_token_lines`: one streamsolve document = one KenLM sentence, so both
   reset at the same blank lines) beside streamsolve R = 1..4, Kneser–Ney raw and calibrated
   (in memory, as section 8; the CLI's ``eval`` of the R = 1, 3, 4 stores as a check), in bits
   per raw byte of the evaluation slice (every byte, blank lines included, as ``eval``
   counts). KenLM's ``</s>`` at each document end is the cost of the blank line that ends it,
   which streamsolve never scores: KenLM is shown with and without it. Store and binary sizes
   and the peak memory of each build close the section.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import types
from pathlib import Path

from . import common
from . import kenlm_tools as kt

logger = logging.getLogger(__name__)

V = 8192
SORT_MEMORY = "2G"  # lmplz -S, and streamsolve count's -S budget
#: Shards of the quick build-cost run (a few MB).
QUICK_BUILD = ["bible-bwe.txt.gz", "bible-diaglot.txt.gz", "bible-oeb.txt.gz"]
#: Held-out by source (BENCHMARKS.md section 8): training shards, calibration, evaluation.
SPLIT = {"full": ["gcide-00.txt.gz", "wordnet-00.txt.gz", "foldoc-jargon-devil.txt.gz",
                  "bible-web.txt.gz", "bible-bwe.txt.gz"],
         "quick": ["bible-bwe.txt.gz", "bible-oeb.txt.gz"]}
CALIB_SOURCE, EVAL_SOURCE = "perl-doc.txt.gz", "python-doc.txt.gz"
HELD_BYTES = {"full": 1 << 20, "quick": 1 << 18}
KENLM_ORDERS = (2, 3, 4, 5)
RADII = (1, 2, 3, 4)
#: (KenLM order, streamsolve R) pairs of the scoring-cost rows; R = 4 is counted for sizes.
SCORING_PAIRS = ((2, 1), (4, 3))
CLI_RADII = (1, 3, 4)
#: lmplz refuses raw text holding its own symbols (<s>, </s>, <unk>: the documentation
#: shards do); this turns them into whitespace.
RAW_TEXT = ("--skip_symbols",)


def streamsolve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamsolve", *args]


def streamsolve_env() -> dict:
    import os

    return {"PYTHONPATH": str(common.REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_streamsolve_json(args: list[str], log: Path, out: Path) -> tuple[kt.Measured, dict]:
    """A measured ``streamsolve ARGS --json``: the measure and its JSON summary."""
    measured = kt.run_measured(streamsolve_command(*args, "--json"), log, stdout=out,
                               env=streamsolve_env())
    return measured, json.loads(out.read_text().strip().splitlines()[-1])


def lmplz(kenlm: Path, order: int, text: Path, arpa: Path, scratch: Path,
          extra: tuple[str, ...] = ()) -> list[str]:
    return [str(kenlm / "lmplz"), "-o", str(order), "-S", SORT_MEMORY, "-T", str(scratch),
            *extra, "--text", str(text), "--arpa", str(arpa)]


# ---------------------------------------------------------------- a. build cost on raw text

def build_cost(kenlm: Path, full: bool, scratch: Path, n_rounds: int,
               partial: Path | None = None) -> str:
    """Table a (``partial``: the table so far, rewritten after each round)."""
    paths = common.shards() if full else common.shards(QUICK_BUILD)
    texts = kt.decompress(paths, scratch / "raw")
    corpus = kt.concatenate(texts, scratch / f"raw-corpus-{'full' if full else 'quick'}.txt")
    mb = corpus.stat().st_size / 1e6
    gunzip = kt.run_measured(["gzip", "-dc", *paths], scratch / "logs" / "gunzip.log")
    tokenizer = common.bench_tokenizer(V)
    tmp = scratch / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    store = scratch / "build.zarr"
    count = ["count", *map(str, texts), "--store", str(store), "--radius", "3",
             "-S", SORT_MEMORY + "B", "--tmp", str(tmp / "spill")]
    logs = scratch / "logs"

    def lmplz_step(order: int):
        return lambda: kt.run_measured(lmplz(kenlm, order, corpus, tmp / f"raw-o{order}.arpa",
                                             tmp, RAW_TEXT), logs / f"lmplz{order}.log")

    def count_step(tag: str, *extra: str):
        return lambda: run_streamsolve_json([*count, *extra], logs / f"count-{tag}.log",
                                            tmp / "count.json")[0]

    steps = {"lmplz -o 3": lmplz_step(3),
             "count --radius 3, BPE given": count_step("given", "--tokenizer", str(tokenizer)),
             "lmplz -o 5": lmplz_step(5),
             "count --radius 3, BPE trained by count": count_step("trained", "--vocab-size",
                                                                  str(V))}
    results: dict[str, list[kt.Measured]] = {name: [] for name in steps}
    loads = []
    for _ in range(n_rounds):
        loads.append(kt.load_line())
        for name, step in steps.items():
            shutil.rmtree(store, ignore_errors=True)
            results[name].append(step())
            for arpa in tmp.glob("*.arpa"):
                arpa.unlink()
        if partial is not None:
            partial.write_text(build_table(results, mb, len(paths), gunzip,
                                           [*loads, kt.load_line()], full), encoding="utf-8")
    loads.append(kt.load_line())
    return build_table(results, mb, len(paths), gunzip, loads, full)


def round_notes(loads: list[str]) -> list[str]:
    """The load at each round's start and at the end, and the machine line."""
    return ["load at the start of each round and at the end: " + " | ".join(loads),
            f"machine: {common.machine()}"]


def median_rate(amount: float, runs: list[kt.Measured]) -> float:
    import statistics

    return amount / statistics.median(r.cpu for r in runs)


def build_table(results: dict, mb: float, n_shards: int, gunzip: kt.Measured,
                loads: list[str], full: bool) -> str:
    o3, o5 = median_rate(mb, results["lmplz -o 3"]), median_rate(mb, results["lmplz -o 5"])
    rows = []
    for name, runs in results.items():
        rate = median_rate(mb, runs)
        rows.append([name, kt.spread(r.cpu for r in runs), kt.spread(r.wall for r in runs),
                     common.gib(max(r.peak for r in runs)), f"{rate:.2f}",
                     f"**{rate / o3:.2f}**", f"{rate / o5:.2f}"])
    paired = {name: [f"{a.cpu / b.cpu:.2f}" for a, b in zip(results["lmplz -o 3"], runs)]
              for name, runs in results.items() if name.startswith("count")}
    notes = [
        f"text: {n_shards} shards of {common.CORPUS}"
        + ("" if full else " (quick subset)") + f", {mb:.1f} MB decompressed, decompressed once "
        f"beforehand and charged to neither tool (`gzip -dc` of the shards: {gunzip.cpu:.1f} "
        "CPU-s, to add to both if wanted)",
        f"KenLM: `lmplz -o N -S {SORT_MEMORY} -T TMP --skip_symbols --text CORPUS.txt "
        "--arpa OUT.arpa` "
        "(whitespace words, one sentence a line; the ARPA written to disk and deleted after)",
        f"streamsolve: `streamsolve count SHARDS.txt --store S --radius 3 -S {SORT_MEMORY}B "
        f"--tmp TMP --json` (default workers = cores, threads), with `--tokenizer` "
        f"tokenizer-{V}.json (`bench_tokenizer`, trained once) or `--vocab-size {V}` "
        "(count trains its BPE on a sample first); a new store each run",
        "CPU-s = user + sys of the whole process tree; min-max (median) over the rounds; "
        "MB per CPU-s from the median; ratio = streamsolve's MB per CPU-s over KenLM's "
        "(target issue 23: >= 1 against `lmplz -o 3`, BPE included)",
        "per-round CPU ratio lmplz -o 3 / count (paired, same round): "
        + "; ".join(f"{k}: {', '.join(v)}" for k, v in paired.items() if v),
        *round_notes(loads),
    ]
    return common.table(f"a. Build cost on raw text: KenLM lmplz vs streamsolve count "
                        f"({len(next(iter(results.values())))} interleaved rounds)",
                        ["step", "CPU-s", "wall s", "peak", "MB per CPU-s",
                         "ratio vs -o 3", "ratio vs -o 5"], rows, notes)


# ------------------------------------------------- shared set-up of b and c: the BPE split

def token_source(tokenizer_text: str):
    """What `streamsolve.documents.read_documents` needs of a model: tokenizer and BOS id."""
    from tokenizers import Tokenizer

    from streamsolve.text.tokenizer import find_bos, tokenizer_from_json

    _, bos_id = find_bos(tokenizer_from_json(tokenizer_text))
    return types.SimpleNamespace(tokenizer=Tokenizer.from_str(tokenizer_text), bos_id=bos_id)


def encode(paths: list, source, tokens_file: Path | None = None) -> dict:
    """Documents of token ids of text files as ``eval`` reads them, their raw bytes, the
    in-process CPU-seconds of reading + encoding, and (``tokens_file``) the KenLM sentences."""
    from streamsolve.documents import read_documents

    started = kt.self_cpu()
    docs, n_bytes = read_documents([str(p) for p in paths], source)
    cpu = kt.self_cpu() - started
    if tokens_file is not None:
        with open(tokens_file, "w") as handle:
            kt.write_token_lines(docs, handle)
    return {"docs": [d for d in docs if d.size], "bytes": n_bytes, "encode_cpu": cpu,
            "tokens": sum(int(d.size) for d in docs), "file": tokens_file}


def write_slice(source: str, n_bytes: int, target: Path) -> Path:
    """The first read block of a shard, every line (blank ones too), as a text file."""
    target.write_text("".join(kt.first_block_lines(source, n_bytes)), encoding="utf-8")
    return target


def prepare_split(full: bool, scratch: Path) -> dict:
    """Token files of the training split, calibration and evaluation slices, and the whole
    held-out source for the scoring cost (the evaluation slice in quick mode)."""
    mode = "full" if full else "quick"
    train = common.shards(SPLIT[mode])
    calib_src, eval_src = common.shards([CALIB_SOURCE]), common.shards([EVAL_SOURCE])
    if len(train) != len(SPLIT[mode]) or not calib_src or not eval_src:
        raise common.Skip("bench shards of the section-8 split not found")
    folder = scratch / "bpe"
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = common.bench_tokenizer(V)
    text = tokenizer.read_text(encoding="utf-8")
    source = token_source(text)
    calib = write_slice(calib_src[0], HELD_BYTES[mode], folder / "calibration.txt")
    evaluation = write_slice(eval_src[0], HELD_BYTES[mode], folder / "evaluation.txt")
    heldout = kt.decompress(eval_src, folder)[0] if full else evaluation
    return {"mode": mode, "train_paths": train, "tokenizer": tokenizer, "bos_id": source.bos_id,
            "calib_path": calib, "eval_path": evaluation, "heldout_path": heldout,
            "train": encode(train, source, folder / "train.tokens"),
            "calib": encode([calib], source),
            "eval": encode([evaluation], source, folder / "evaluation.tokens"),
            "heldout": encode([heldout], source, folder / "heldout.tokens")}


def build_kenlm_models(kenlm: Path, split: dict, scratch: Path) -> dict:
    """``lmplz`` of orders 2..5 on the training tokens and ``build_binary`` of each."""
    folder, logs = scratch / "bpe", scratch / "logs"
    models = {}
    for order in KENLM_ORDERS:
        arpa, binary = folder / f"o{order}.arpa", folder / f"o{order}.binary"
        built = kt.run_measured(lmplz(kenlm, order, split["train"]["file"], arpa, folder,
                                      ("--discount_fallback",)), logs / f"lmplz-bpe{order}.log")
        binarized = kt.run_measured([str(kenlm / "build_binary"), str(arpa), str(binary)],
                                    logs / f"build_binary{order}.log")
        with open(arpa) as handle:
            unigrams = kt.arpa_unigrams(handle)
        models[order] = {"lmplz": built, "build_binary": binarized, "binary": binary,
                         "unigrams": unigrams,
                         "arpa_bytes": arpa.stat().st_size, "binary_bytes": binary.stat().st_size}
    return models


def build_streamsolve_stores(split: dict, scratch: Path) -> dict:
    """``count`` of the training shards at R = 1, 3, 4 and ``finalize --calibrate`` on the
    calibration slice (the default Kneser–Ney), measured."""
    stores = {}
    for radius in CLI_RADII:
        store = scratch / "bpe" / f"r{radius}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        log = scratch / "logs"
        counted, summary = run_streamsolve_json(
            ["count", *split["train_paths"], "--store", str(store), "--tokenizer",
             str(split["tokenizer"]), "--radius", str(radius), "-S", SORT_MEMORY + "B",
             "--tmp", str(scratch / "tmp" / "spill")], log / f"count-bpe{radius}.log",
            scratch / "tmp" / "out.json")
        finalized, _ = run_streamsolve_json(
            ["finalize", str(store), "--calibrate", str(split["calib_path"])],
            log / f"finalize-bpe{radius}.log", scratch / "tmp" / "out.json")
        stores[radius] = {"store": store, "count": counted, "finalize": finalized,
                          "tokens": summary.get("new_tokens"), "bytes": kt.tree_bytes(store)}
    return stores


# ---------------------------------------------------------------------- b. scoring cost

def scoring_cost(kenlm: Path, split: dict, models: dict, stores: dict, scratch: Path,
                 n_rounds: int) -> str:
    heldout, logs, tmp = split["heldout"], scratch / "logs", scratch / "tmp"
    results: dict[str, list] = {}
    loads = []
    for _ in range(n_rounds):
        loads.append(kt.load_line())
        for order, radius in SCORING_PAIRS:
            results.setdefault(f"q{order}", []).append(kt.run_measured(
                [str(kenlm / "query"), "-v", "summary", str(models[order]["binary"])],
                logs / f"query{order}.log", stdin=heldout["file"], stdout=tmp / "query.out"))
            measured, summary = run_streamsolve_json(
                ["eval", str(stores[radius]["store"]), str(split["heldout_path"])],
                logs / f"eval{radius}.log", tmp / "eval.json")
            if summary["tokens"] != heldout["tokens"]:
                raise RuntimeError(f"eval scored {summary['tokens']} tokens, the token file "
                                   f"holds {heldout['tokens']}")
            results.setdefault(f"e{radius}", []).append(measured)
    loads.append(kt.load_line())
    return scoring_table(results, split, loads)


def scoring_table(results: dict, split: dict, loads: list[str]) -> str:
    import statistics

    heldout = split["heldout"]
    tokens, encode_cpu = heldout["tokens"], heldout["encode_cpu"]
    rows = []
    for order, radius in SCORING_PAIRS:
        query, ev = results[f"q{order}"], results[f"e{radius}"]
        q_rate = median_rate(tokens, query)
        e_cpu = statistics.median(r.cpu for r in ev)
        e_rate, bare = tokens / e_cpu, tokens / max(e_cpu - encode_cpu, 1e-9)
        rows.append([f"query, order {order} (binary)", kt.spread((r.cpu for r in query), "{:.2f}"),
                     kt.spread(r.wall for r in query), common.mib(max(r.peak for r in query)),
                     f"{q_rate:,.0f}", "", ""])
        rows.append([f"streamsolve eval, R = {radius}", kt.spread((r.cpu for r in ev), "{:.2f}"),
                     kt.spread(r.wall for r in ev), common.mib(max(r.peak for r in ev)),
                     f"{e_rate:,.0f}", f"**1/{q_rate / e_rate:.1f}**", f"1/{q_rate / bare:.1f}"])
    notes = [
        f"held-out text: {split['heldout_path'].name} ({heldout['bytes']:,} bytes, "
        f"{tokens:,} BPE tokens in {len(heldout['docs']):,} documents); models built on the "
        f"training split ({', '.join(SPLIT[split['mode']])})",
        "KenLM: `lmplz -o N` on the training BPE tokens, `build_binary` (probing), then "
        "`query -v summary MODEL.binary < heldout.tokens` (ids already encoded; one document "
        "a line; query also scores one `</s>` per line, not counted in the tokens)",
        "streamsolve: `count TRAIN --tokenizer tokenizer-8192.json --radius R`, `finalize "
        "--calibrate calibration.txt`, timed: `eval STORE heldout.txt --json` (reads the text "
        "and BPE-encodes it)",
        f"BPE encoding alone (`streamsolve.documents.read_documents`, the path eval reads with; "
        f"in-process CPU-s, measured once): {encode_cpu:.1f} CPU-s; the last column is eval "
        "without it",
        "tokens per CPU-s from the median CPU-s; ratio = eval's tokens per CPU-s over query's "
        "at equal context (order 2 / R = 1, order 4 / R = 3); target issue 23: >= 1/3, BPE "
        "included",
        *round_notes(loads),
    ]
    return common.table(f"b. Scoring cost: KenLM query vs streamsolve eval "
                        f"({len(results['q2'])} interleaved rounds)",
                        ["step", "CPU-s", "wall s", "peak", "tokens per CPU-s",
                         "eval / query", "eval / query, BPE excluded"], rows, notes)


# --------------------------------------------------------------------------- c. quality

def kenlm_quality(kenlm: Path, split: dict, models: dict, scratch: Path) -> dict:
    """``query -v word -v sentence`` of each order on the evaluation tokens, summed."""
    scores = {}
    for order in KENLM_ORDERS:
        out = scratch / "tmp" / f"query-words{order}.out"
        kt.run_measured([str(kenlm / "query"), "-v", "word", "-v", "sentence",
                         str(models[order]["binary"])], scratch / "logs" / "query-words.log",
                        stdin=split["eval"]["file"], stdout=out)
        with open(out) as handle:
            scores[order] = kt.parse_query_words(handle)
        if scores[order].tokens != split["eval"]["tokens"]:
            raise RuntimeError(f"query scored {scores[order].tokens} tokens, expected "
                               f"{split['eval']['tokens']}")
    return scores


def streamsolve_quality(split: dict) -> dict:
    """Kneser–Ney raw and calibrated bits of the evaluation slice at R = 1..4 (in memory,
    counted once at R = 4: the R = k counts are its blocks 1..k, see `bench.quality_kn`)."""
    from streamsolve.core.counting import CountConfig, count_token_documents
    from streamsolve.core.weights import finalize
    from streamsolve.language_model import LanguageModel

    from .quality_kn import sub_counts

    bos_id, test = split["bos_id"], split["eval"]["docs"]
    counts = count_token_documents(split["train"]["docs"],
                                   CountConfig(V, max(RADII), "cat", bos_id))
    bits = {}
    for radius in RADII:
        model = LanguageModel(finalize(sub_counts(counts, radius), smoothing="kneser-ney"),
                              bos_id=bos_id)
        raw = model.evaluate_ids(test)
        cal = model.calibrate(split["calib"]["docs"]).evaluate_ids(test)
        bits[radius] = tuple(kt.streamsolve_bits(e.cross_entropy, e.tokens) for e in (raw, cal))
    return bits


def cli_quality(split: dict, stores: dict, scratch: Path) -> dict:
    """``streamsolve eval`` (calibrated) of the evaluation slice with each CLI store."""
    out = {}
    for radius, store in stores.items():
        _, summary = run_streamsolve_json(["eval", str(store["store"]), str(split["eval_path"])],
                                          scratch / "logs" / "eval-slice.log",
                                          scratch / "tmp" / "eval.json")
        out[radius] = summary
    return out


def quality(kenlm: Path, split: dict, models: dict, stores: dict, scratch: Path) -> str:
    scores = kenlm_quality(kenlm, split, models, scratch)
    ours = streamsolve_quality(split)
    cli = cli_quality(split, stores, scratch)
    n_bytes = split["eval"]["bytes"]
    rows = []
    for radius in RADII:
        order = radius + 1
        score = scores[order]
        with_ends = kt.bits_per_byte(score.bits(True), n_bytes)
        without = kt.bits_per_byte(score.bits(False), n_bytes)
        shared = kt.bits_per_byte(score.bits(False) + kt.unk_share_bits(
            score.oov, V, models[order]["unigrams"]), n_bytes)
        raw, cal = (kt.bits_per_byte(b, n_bytes) for b in ours[radius])
        check = f"{cli[radius]['bits_per_byte']:.4f}" if radius in cli else ""
        rows.append([radius, order, f"{with_ends:.4f}", f"**{without:.4f}**", f"{shared:.4f}",
                     f"{-score.end_log10 * kt.LOG2_10 / score.sentences:.2f}",
                     f"{raw:.4f}", f"**{cal:.4f}**", check, f"**{cal / without:.3f}**"])
    return quality_table(rows, split, scores, models)


def quality_table(rows: list, split: dict, scores: dict, models: dict) -> str:
    ev, lines = split["eval"], split["eval_path"].read_text(encoding="utf-8").splitlines()
    blank = sum(1 for line in lines if not line.strip())
    blank_bytes = sum(len(line.encode()) + 1 for line in lines if not line.strip())
    notes = [
        f"split held out by source (BENCHMARKS.md section 8): training = "
        f"{', '.join(SPLIT[split['mode']])} ({split['train']['tokens']:,} tokens, "
        f"{len(split['train']['docs']):,} documents); calibration = the first "
        f"{split['calib']['bytes']:,} bytes of {CALIB_SOURCE}; evaluation = the first "
        f"{ev['bytes']:,} bytes of {EVAL_SOURCE} ({ev['tokens']:,} tokens, "
        f"{len(ev['docs']):,} documents, {blank:,} blank lines); BPE V = {V} (`bench_tokenizer`)",
        f"bits per byte over every byte of the evaluation slice, blank lines included (as "
        f"`eval` counts; section 8's table divides by the non-blank lines' bytes only, "
        f"{ev['bytes'] - blank_bytes:,})",
        "KenLM: `lmplz -o N -S 2G --discount_fallback` on the training tokens, one document "
        "(blank-line separated, newline tokens inside) a sentence; `query -v word -v sentence "
        "o N.binary < evaluation.tokens`; 'with </s>' adds the sentence ends, i.e. the cost of "
        "the blank line ending each document, which streamsolve never scores: compare "
        "streamsolve with 'without </s>'",
        f"KenLM scores a token absent from its training text as <unk>, with the mass of all "
        f"of them; '<unk> shared' spreads it evenly over the {V} - (unigrams - 3) BPE tokens "
        f"it never saw (streamsolve predicts all {V}); OOV tokens of the evaluation slice: "
        + ", ".join(f"{scores[o].oov:,} (order {o}, {models[o]['unigrams']:,} unigrams)"
                    for o in scores),
        "streamsolve: Kneser–Ney (modified, interpolated, default discounts), counted in memory "
        "once at R = 4 (R = k = its blocks 1..k); calibrated on the calibration slice "
        "(`LanguageModel.calibrate`); 'CLI eval' = `streamsolve eval` of the `count` + "
        "`finalize --calibrate` store of that R on evaluation.txt (a check)",
        "ratio = streamsolve calibrated over KenLM without </s> (target issue 24 at --ngram 5: "
        "<= 0.98)",
    ]
    return common.table("c. Quality: bits per raw byte of held-out text, KenLM vs streamsolve "
                        "on the same BPE tokens",
                        ["R", "KenLM order", "KenLM with </s>", "KenLM without </s>",
                         "KenLM w/o </s>, <unk> shared", "bits per </s>", "streamsolve KN raw", "streamsolve KN cal.",
                         "CLI eval (cal.)", "ratio"], rows, notes)


def sizes_table(models: dict, stores: dict) -> str:
    rows = []
    for order, m in models.items():
        rows.append([f"KenLM order {order}", f"{m['lmplz'].cpu:.1f}",
                     common.mib(m["lmplz"].peak), f"{m['build_binary'].cpu:.1f}",
                     common.mib(m["build_binary"].peak), common.mib(m["arpa_bytes"]) + " ARPA, "
                     + common.mib(m["binary_bytes"]) + " binary"])
    for radius, s in stores.items():
        rows.append([f"streamsolve R = {radius}", f"{s['count'].cpu:.1f}",
                     common.mib(s["count"].peak), f"{s['finalize'].cpu:.1f}",
                     common.mib(s["finalize"].peak), common.mib(s["bytes"]) + " store"])
    notes = ["KenLM: `lmplz` (with -S 2G, which sets most of its peak) then `build_binary` "
             "(probing, no quantization); streamsolve: `count --radius R` of the training shards "
             "(.gz, reading + BPE included) then `finalize --calibrate` (Kneser–Ney weights + "
             "calibration); the store holds counts and weights",
             "one run each (not interleaved)"]
    return common.table("c'. Build cost, peak memory and size on the BPE training split",
                        ["model", "build CPU-s", "build peak", "binarize / finalize CPU-s",
                         "its peak", "size on disk"], rows, notes)


def run(full: bool) -> str:
    kenlm = kt.find_kenlm()
    scratch = common.WORK / "kenlm"
    for sub in ("tmp", "logs"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    n_rounds, mode = kt.rounds(full), "full" if full else "quick"
    started = kt.load_line()
    parts = []

    def keep(name: str, text: str) -> None:  # each table on disk as soon as it is measured
        (scratch / f"{mode}-{name}.txt").write_text(text, encoding="utf-8")
        parts.append(text)

    wanted = kt.parts()
    if {"b", "c", "n"} & wanted:
        split = prepare_split(full, scratch)
        models = build_kenlm_models(kenlm, split, scratch)
        stores = build_streamsolve_stores(split, scratch)
        if "b" in wanted:
            keep("b-scoring", scoring_cost(kenlm, split, models, stores, scratch, n_rounds))
        if "c" in wanted:
            keep("c-quality", quality(kenlm, split, models, stores, scratch))
            keep("c-sizes", sizes_table(models, stores))
        if "n" in wanted:  # issue 24: suffix n-gram blocks beside KenLM
            from .kenlm_ngram import run_part

            keep("n-ngram", "\n".join(run_part(kenlm, split, models, stores, scratch,
                                                 n_rounds)))
        del split
    if "a" in wanted:
        keep("a-build", build_cost(kenlm, full, scratch, n_rounds,
                                   scratch / f"{mode}-a-build.partial.txt"))
    parts.append(f"- KenLM binaries: {kenlm}; {started} at the start, {kt.load_line()} at "
                 f"the end; scratch files in {scratch}\n")
    return "\n".join(parts)
