"""Part n of benchmark "kenlm" (issue 24): streamsolve's suffix n-gram blocks beside KenLM on
the split of BENCHMARKS.md section 8, in the same run as parts b and c (same BPE tokens, same
KenLM binaries, same evaluation and calibration slices).

n1. Quality: ``--ngram N`` (N = 3, 5) alone (the pure Kneser–Ney N-gram block, which is
    KenLM's model) and with the skip blocks R = 4, calibrated (one scalar per block and gamma
    on the calibration slice), in bits per raw byte of the evaluation slice, beside KenLM
    orders N and 5 without ``</s>``; in memory (as part c), with the distinct contexts of each
    order.
n2. Cost: the CLI ``count --ngram 5 --radius 4`` + ``finalize --calibrate`` of the training
    shards (CPU-s, peak, store bytes, its calibrated ``eval`` as a check) beside ``lmplz -o 5``
    + ``build_binary``, and the scoring speed of ``eval`` on the store with n-gram blocks
    against the R = 4 store without them (A B A B, same held-out text).
"""

from __future__ import annotations

import time
from pathlib import Path

from . import common
from . import kenlm_tools as kt

ORDERS = (3, 5)
SKIPS = 4


def ngram_rows(split: dict, offsets_counts, V: int) -> dict:
    """Raw and calibrated bits of the evaluation slice for each order (in memory)."""
    from streamsolve.core.ngram_counts import NgramConfig, count_ngram_documents
    from streamsolve.core.ngram_kneser_ney import estimate_kneser_ney
    from streamsolve.core.ngram_weights import NgramWeights
    from streamsolve.core.weights import finalize
    from streamsolve.language_model import LanguageModel

    from .quality_kn import sub_counts

    bos_id, test = split["bos_id"], split["eval"]["docs"]
    offsets = finalize(sub_counts(offsets_counts, SKIPS), smoothing="kneser-ney")
    out = {}
    for order in ORDERS:
        started = kt.self_cpu()
        counts = count_ngram_documents(split["train"]["docs"], NgramConfig(V, order, bos_id))
        model = estimate_kneser_ney(counts)
        built = kt.self_cpu() - started
        lm = LanguageModel(NgramWeights(offsets, model), bos_id=bos_id)
        raw = lm.evaluate_ids(test)
        started = kt.self_cpu()
        calibrated = lm.calibrate(split["calib"]["docs"])
        fit = kt.self_cpu() - started
        cal = calibrated.evaluate_ids(test)
        out[order] = {"raw": kt.streamsolve_bits(raw.cross_entropy, raw.tokens),
                      "cal": kt.streamsolve_bits(cal.cross_entropy, cal.tokens),
                      "contexts": [o.rows for o in counts.orders],
                      "entries": [o.nnz for o in counts.orders],
                      "theta": calibrated.weights.theta.round(3).tolist(),
                      "build_cpu": built, "calibration_cpu": fit}
    return out


def quality_table(split: dict, scores: dict, ours: dict) -> str:
    n_bytes = split["eval"]["bytes"]
    kenlm5 = kt.bits_per_byte(scores[5].bits(False), n_bytes)
    rows = []
    for order, row in ours.items():
        same = kt.bits_per_byte(scores[order].bits(False), n_bytes)
        raw, cal = (kt.bits_per_byte(row[k], n_bytes) for k in ("raw", "cal"))
        rows.append([f"--ngram {order}", f"{same:.4f}", f"{kenlm5:.4f}", f"{raw:.4f}",
                     f"**{cal:.4f}**", f"{raw / same:.3f}", f"**{cal / kenlm5:.3f}**",
                     " / ".join(f"{c:,}" for c in row["contexts"]),
                     f"{row['build_cpu']:.1f} / {row['calibration_cpu']:.1f}"])
    notes = [
        "same split, BPE tokens and KenLM binaries as table c (KenLM without </s>: the blank "
        "line ending each document, which streamsolve never scores, left out)",
        f"streamsolve raw = the Kneser-Ney N-gram block alone (beta 1 on order N, every other "
        f"scalar 0: KenLM's model, up to <unk>: streamsolve spreads b_1 over all {common_v()} "
        "ids); calibrated = orders 2..N + the skip blocks R = "
        f"{SKIPS} (Kneser-Ney offsets), one scalar per block and gamma fitted on the "
        "calibration slice (`NgramWeights.fit_calibration`); in memory, as table c",
        "thetas (orders 2..N, offsets 1..R, gamma): "
        + "; ".join(f"N={o}: {r['theta']}" for o, r in ours.items()),
        "targets (issue 24): --ngram 5 calibrated / KenLM 5-gram <= 0.98; --ngram 3 "
        "calibrated <= KenLM 5-gram (ratio <= 1)",
        "CPU-s in this process: counting + Kneser-Ney of the orders / the calibration fit",
    ]
    return common.table("n1. Quality with suffix n-gram blocks: bits per raw byte, KenLM vs "
                        "streamsolve --ngram N on the same BPE tokens",
                        ["model", "KenLM order N", "KenLM order 5", "ss raw (N-gram KN)",
                         "ss calibrated (+ skips)", "raw / KenLM N", "cal. / KenLM 5",
                         "distinct contexts, orders 2..N", "CPU-s build / calib."], rows, notes)


def common_v() -> int:
    from .kenlm import V

    return V


def cost_table(kenlm: Path, split: dict, models: dict, stores: dict, scratch: Path,
               n_rounds: int) -> str:
    """n2: build cost, peak and size of ``--ngram 5 --radius 4``, and eval speed vs R = 4."""
    from .kenlm import SORT_MEMORY, run_streamsolve_json

    logs, tmp = scratch / "logs", scratch / "tmp"
    store = scratch / "bpe" / "n5r4.zarr"
    import shutil

    shutil.rmtree(store, ignore_errors=True)
    counted, summary = run_streamsolve_json(
        ["count", *split["train_paths"], "--store", str(store), "--tokenizer",
         str(split["tokenizer"]), "--radius", str(SKIPS), "--ngram", "5", "-S",
         SORT_MEMORY + "B", "--tmp", str(tmp / "spill")], logs / "count-n5.log", tmp / "n.json")
    finalized, _ = run_streamsolve_json(["finalize", str(store), "--calibrate",
                                         str(split["calib_path"])], logs / "finalize-n5.log",
                                        tmp / "n.json")
    speeds: dict[str, list] = {"R = 4": [], "--ngram 5 --radius 4": []}
    checks = {}
    loads = []
    for _ in range(n_rounds):
        loads.append(kt.load_line())
        for name, path in (("R = 4", stores[SKIPS]["store"]), ("--ngram 5 --radius 4", store)):
            measured, result = run_streamsolve_json(["eval", str(path),
                                                     str(split["eval_path"])],
                                                    logs / "eval-n5.log", tmp / "n.json")
            speeds[name].append(measured)
            checks[name] = result
    loads.append(kt.load_line())
    o5 = models[5]
    tokens = split["eval"]["tokens"]
    rows = [["KenLM lmplz -o 5 + build_binary", f"{o5['lmplz'].cpu:.1f}",
             common.mib(o5["lmplz"].peak), f"{o5['build_binary'].cpu:.1f}",
             common.mib(o5["binary_bytes"]) + " binary", "", ""],
            [f"streamsolve count --ngram 5 --radius {SKIPS} + finalize --calibrate",
             f"{counted.cpu:.1f}", common.mib(counted.peak), f"{finalized.cpu:.1f}",
             common.mib(kt.tree_bytes(store)) + " store", "", ""]]
    for name, runs in speeds.items():
        cpu = sorted(r.cpu for r in runs)[len(runs) // 2]
        rows.append([f"streamsolve eval, {name}", kt.spread(r.cpu for r in runs),
                     common.mib(max(r.peak for r in runs)), "", "",
                     f"{tokens / cpu:,.0f}", f"{checks[name]['bits_per_byte']:.4f}"])
    ratio = (sorted(r.cpu for r in speeds["--ngram 5 --radius 4"])[n_rounds // 2]
             / sorted(r.cpu for r in speeds["R = 4"])[n_rounds // 2])
    notes = [
        f"count: {summary.get('new_tokens'):,} training tokens; store = counts (offsets and "
        "n-grams) + weights; KenLM's binary is probing, no quantization",
        f"eval: `streamsolve eval STORE {split['eval_path'].name} --json` ({tokens:,} tokens, "
        "reading and BPE included), interleaved A B per round; the last column is its "
        f"calibrated bits per byte (a check of n1); eval CPU ratio n-gram / R = 4: "
        f"**{ratio:.2f}** (target issue 24: <= 2)",
        *[f"load: {line}" for line in loads],
    ]
    return common.table("n2. Cost of --ngram 5: build, peak, size, and eval speed",
                        ["step", "CPU-s", "peak", "finalize CPU-s", "size", "eval tokens per "
                         "CPU-s", "eval bits per byte"], rows, notes)


def run_part(kenlm: Path, split: dict, models: dict, stores: dict, scratch: Path,
             n_rounds: int) -> list[str]:
    """Tables n1 and n2."""
    from streamsolve.core.counting import CountConfig, count_token_documents

    from .kenlm import kenlm_quality

    started = time.perf_counter()
    scores = kenlm_quality(kenlm, split, models, scratch)
    offsets_counts = count_token_documents(split["train"]["docs"],
                                           CountConfig(common_v(), SKIPS, "cat", split["bos_id"]))
    ours = ngram_rows(split, offsets_counts, common_v())
    tables = [quality_table(split, scores, ours)]
    tables.append(cost_table(kenlm, split, models, stores, scratch, n_rounds))
    tables.append(f"- part n took {time.perf_counter() - started:.0f} s wall\n")
    return tables


def _token_documents(path: Path) -> list:
    """Documents of a KenLM token file (`kenlm_tools.write_token_lines`: ids of one document
    a line)."""
    import numpy as np

    with open(path) as handle:
        return [np.array(line.split(), dtype=np.int64) for line in handle if line.strip()]


def from_files(folder: str) -> str:
    """Table n1 (plus today's R = 4 without n-grams) from the files part c leaves in its
    ``bpe/`` folder (``train.tokens``, ``evaluation.tokens``, ``calibration.txt``,
    ``evaluation.txt``, ``o3.binary``, ``o5.binary``): for a full-size run whose KenLM
    models and token files exist already (``python -c "from bench.kenlm_ngram import
    from_files; print(from_files('DIR'))"``, KenLM's ``query`` from ``$KENLM_BIN``)."""
    from streamsolve.core.counting import CountConfig, count_token_documents
    from streamsolve.core.weights import finalize
    from streamsolve.language_model import LanguageModel

    from .kenlm import V, encode, token_source

    folder = Path(folder)
    kenlm = kt.find_kenlm()
    source = token_source(common.bench_tokenizer(V).read_text(encoding="utf-8"))
    evaluation = encode([folder / "evaluation.txt"], source)
    split = {"bos_id": source.bos_id, "eval": evaluation,
             "calib": encode([folder / "calibration.txt"], source),
             "train": {"docs": _token_documents(folder / "train.tokens")}}
    if sum(int(d.size) for d in evaluation["docs"]) != sum(
            int(d.size) for d in _token_documents(folder / "evaluation.tokens")):
        raise RuntimeError("evaluation.tokens does not hold evaluation.txt's tokens")
    scores = {}
    for order in sorted({*ORDERS, 5}):
        out = folder / f"query-words{order}.out"
        kt.run_measured([str(kenlm / "query"), "-v", "word", "-v", "sentence",
                         str(folder / f"o{order}.binary")], folder / "query.log",
                        stdin=folder / "evaluation.tokens", stdout=out)
        with open(out) as handle:
            scores[order] = kt.parse_query_words(handle)
    counts = count_token_documents(split["train"]["docs"], CountConfig(V, SKIPS, "cat",
                                                                       source.bos_id))
    plain = LanguageModel(finalize(counts, smoothing="kneser-ney"), bos_id=source.bos_id)
    today = plain.calibrate(split["calib"]["docs"]).evaluate_ids(evaluation["docs"])
    ours = ngram_rows(split, counts, V)
    n_bytes = evaluation["bytes"]
    tokens = sum(int(d.size) for d in split["train"]["docs"])
    line = (f"- today (no n-gram blocks): R = {SKIPS} Kneser-Ney calibrated "
            f"{kt.bits_per_byte(kt.streamsolve_bits(today.cross_entropy, today.tokens), n_bytes):.4f}"
            f" bits per byte; training tokens {tokens:,} ({folder}/train.tokens)\n")
    return quality_table(split, scores, ours) + line
