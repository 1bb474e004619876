"""Two checkouts of streamsolve side by side: are counts and weights bit-identical, and is
counting as fast? For refactors that must not change behaviour.

    python -m bench.compare_trees OLD_CHECKOUT NEW_CHECKOUT [SHARD ...] [--repeats 2]
        [--aggregation cat|sum] [--finalize 'OPTIONS' ...]

Both trees count the same shards with the same tokenizer (trained once by OLD), R = 3,
alternating OLD, NEW, OLD, NEW, ...; both finalize their first store (once per
``--finalize``, each time on a fresh copy of the counts, e.g. ``--finalize '--form column'
--finalize '--calibrate held.txt --smoothing-search on'``; default: one plain finalize);
every array of the counts and of the weights is compared exactly. Prints tokens/s per run
and NEW/OLD ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .common import CORPUS

DEFAULT_SHARDS = ("wordnet-00.txt.gz", "wordnet-01.txt.gz", "foldoc-jargon-devil.txt.gz",
                  "perl-doc.txt.gz", "bible-asv.txt.gz", "bible-dar.txt.gz")


def _run(tree: str, *args: str) -> tuple[dict, float]:
    env = dict(os.environ, PYTHONPATH=tree, TOKENIZERS_PARALLELISM="true")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "streamsolve", *args, "--json", "-q"], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{tree}: streamsolve {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - started


def stored_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of a store's committed counts and current weights, by a layout-free name."""
    import zarr

    group = zarr.open_group(path, mode="r")
    meta = dict(group.attrs)
    generation = meta["counts"]["generation"]
    out = {"unigram": group[f"counts/g{generation}/unigram"][:]}
    for r in range(meta["config"]["radius"] if meta["config"]["aggregation"] == "cat" else 1):
        k = 0
        while f"counts/g{generation}/r{r + 1}/b{k}" in group:
            for name in ("indptr", "indices", "data"):
                out[f"counts r{r + 1} b{k} {name}"] = group[f"counts/g{generation}/r{r + 1}/b{k}/{name}"][:]
            k += 1
    weights = meta["weights"]
    for r, keys in enumerate(weights["blocks"]):
        for k, key in enumerate(keys):
            for name in ("indptr", "indices", "data", "row_terms"):
                out[f"weights r{r + 1} b{k} {name}"] = group[f"weights/blocks/{key}/{name}"][:]
    for name in ("col_terms", "log_unigram"):
        out[f"weights {name}"] = group[f"weights/v{weights['id']}/{name}"][:]
    return out


#: Attributes of the weights that differ between any two finalizes (ids, times).
VOLATILE_WEIGHTS_KEYS = ("id", "counts_id", "written")


def weights_params(path: str) -> dict:
    """A store's weights attributes (smoothing values, searches, calibration, block keys)
    without the ones every finalize makes anew (`VOLATILE_WEIGHTS_KEYS`)."""
    import zarr

    weights = dict(zarr.open_group(path, mode="r").attrs)["weights"]
    return {k: v for k, v in weights.items() if k not in VOLATILE_WEIGHTS_KEYS}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_trees", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("shards", nargs="*")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--aggregation", choices=("cat", "sum"), default="cat")
    parser.add_argument("--finalize", action="append", metavar="OPTIONS",
                        help="finalize options (one string; repeatable: one finalize each)")
    args = parser.parse_args(argv)
    shards = args.shards or [str(CORPUS / name) for name in DEFAULT_SHARDS]
    work = tempfile.mkdtemp(prefix="compare-trees-")
    try:
        _run(args.old, "count", shards[0], "--store", f"{work}/tok.zarr", "--radius", "1")
        import zarr

        tokenizer = f"{work}/tokenizer.json"
        with open(tokenizer, "wb") as handle:
            handle.write(bytes(zarr.open_group(f"{work}/tok.zarr", mode="r")["tokenizer"][:]))
        speed = {"old": [], "new": []}
        for repeat in range(args.repeats):
            for name in ("old", "new"):
                result, wall = _run(getattr(args, name), "count", *shards, "--store",
                                    f"{work}/{name}{repeat}.zarr", "--tokenizer", tokenizer,
                                    "--radius", "3", "--aggregation", args.aggregation,
                                    "--memory", "4GB")
                speed[name].append(result["tokens_per_second"])
                print(f"{name} run {repeat}: {result['new_tokens']:,} tokens, "
                      f"{result['tokens_per_second']:,} tokens/s (process wall {wall:.1f} s)", flush=True)
        any_differing = False
        for f, options in enumerate(args.finalize or [""]):
            for name in ("old", "new"):
                shutil.copytree(f"{work}/{name}0.zarr", f"{work}/{name}-f{f}.zarr")
                _run(getattr(args, name), "finalize", f"{work}/{name}-f{f}.zarr",
                     *shlex.split(options))
            old, new = stored_arrays(f"{work}/old-f{f}.zarr"), stored_arrays(f"{work}/new-f{f}.zarr")
            differing = sorted(set(old) ^ set(new)) + [
                key for key in old.keys() & new.keys()
                if old[key].dtype != new[key].dtype or not np.array_equal(old[key], new[key])]
            if weights_params(f"{work}/old-f{f}.zarr") != weights_params(f"{work}/new-f{f}.zarr"):
                differing.append("weights attributes")
            any_differing |= bool(differing)
            values = sum(array.size for array in old.values())
            print(f"finalize {options or '(defaults)'}: arrays compared: {len(old)} "
                  f"({values:,} values); differing: {differing or 'none'}", flush=True)
        ratios = [round(n / o, 3) for n, o in zip(speed["new"], speed["old"])]
        print(f"count tokens/s NEW/OLD per repeat: {ratios}")
        return 1 if any_differing else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
