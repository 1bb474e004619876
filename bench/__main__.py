"""``python -m bench [--full] [--only NAME,...]``: run the benchmarks, print their tables
(and append them to out/bench/results-{quick,full}.md). Always exits 0."""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import sys
import time
import traceback

BENCHES = ["throughput", "kernels", "memory", "quality", "backprop", "scoring", "smoothing",
           "refine", "kenlm", "residual"]
#: Benchmarks whose module is not named after them.
MODULES = {"smoothing": "quality_kn", "refine": "refine_step"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--full", action="store_true", help="full sizes (long)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from . import common

    names = args.only.split(",") if args.only else BENCHES
    mode = "full" if args.full else "quick"
    common.WORK.mkdir(parents=True, exist_ok=True)
    out = common.WORK / f"results-{mode}.md"
    with open(out, "a") as handle:
        handle.write(f"\n## {mode} run, {datetime.datetime.now().isoformat(timespec='seconds')}\n\n")
    for name in names:
        started = time.perf_counter()
        try:
            module = importlib.import_module(f".{MODULES.get(name, name)}", __package__)
            text = module.run(args.full)
        except common.Skip as exc:
            text = f"### {name}: skipped\n\n- {exc}\n"
        except Exception:  # noqa: BLE001 - a benchmark failing must not hide the others
            text = f"### {name}: FAILED\n\n```\n{traceback.format_exc()}```\n"
        text += f"- ({name} took {time.perf_counter() - started:.0f} s)\n"
        print(text, flush=True)
        with open(out, "a") as handle:
            handle.write(text + "\n")
    print(f"(tables appended to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
