"""Does each command stay within ``--memory``? Budget vs measured peak, command by command.

``python -m bench.command_memory [--memory 400MB] [--code DIR] [--work DIR] [--tokenizer T]``

Builds (or reuses, under ``--work``) a store of a 65k-token vocabulary: the tokenizer.json of
the ``anthropic==0.37.1`` wheel (``pip install --no-deps anthropic==0.37.1``), radius 3,
counted on CPython's pydoc topics (even-numbered topics; the odd ones are the held-out text).
Then runs, each on a fresh copy of the counted store and measured from outside
(`bench.measured_run`: the process tree sampled every 50 ms, and the kernel's high-water
mark of the child, what ``/usr/bin/time -v`` prints)::

    streamsolve finalize S --memory B --json
    streamsolve eval S HELDOUT --memory B --json
    streamsolve score S HELDOUT --memory B --json
    streamsolve export S OUT.safetensors --weights --memory B --json
    streamsolve refine S TRAIN --heldout HELDOUT --steps 20 --rank 64 --memory B --json

(the last four on a finalized copy). A command without ``--memory`` (argparse refuses it) is
run without it, and the table says so. A run is killed above ``--kill-above`` (default 4x the
budget) to spare the machine. Only the CLI is driven, so ``--code`` can point at any checkout
(e.g. ``main`` before and after a change) and the same harness measures both.
Exit status: 0 when every command stayed within the budget, 1 otherwise, 2 when it cannot
run (no tokenizer).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .measured_run import mib, run_measured

COMMANDS = ["finalize", "eval", "score", "export --weights", "refine"]
PIP_HINT = "pip install --no-deps anthropic==0.37.1"


def anthropic_tokenizer() -> Path | None:
    """The 65k-token tokenizer.json of the ``anthropic`` wheel, if installed."""
    spec = importlib.util.find_spec("anthropic")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.json"
    return path if path.exists() else None


def write_corpus(work: Path) -> tuple[Path, Path]:
    """Training and held-out text from CPython's pydoc topics (even / odd topics)."""
    from pydoc_data.topics import topics

    texts = [topics[name].strip("\n") for name in sorted(topics)]
    train, heldout = work / "train.txt", work / "heldout.txt"
    train.write_text("\n\n".join(texts[::2]) + "\n", encoding="utf-8")
    heldout.write_text("\n\n".join(texts[1::2]) + "\n", encoding="utf-8")
    return train, heldout


def counted_store(work: Path, tokenizer: Path, train: list[Path], code: str | None) -> Path:
    """The counted store of ``train`` under ``work`` (counted now unless an earlier run of
    the same tokenizer and text left it)."""
    key = hashlib.sha256(repr([str(tokenizer), *map(str, train)]).encode()).hexdigest()[:12]
    store, done = work / f"counted-{key}.zarr", work / f"counted-{key}.ok"
    if store.exists() and done.exists():
        return store
    shutil.rmtree(store, ignore_errors=True)
    run = run_measured(["count", *train, "--store", store, "--tokenizer", tokenizer,
                        "--radius", 3, "--json"], pythonpath=code)
    if run.returncode != 0:
        raise RuntimeError("count failed:\n" + run.stderr[-3000:])
    done.write_text(json.dumps({"tokenizer": str(tokenizer), "train": list(map(str, train)),
                                "tokens": run.summary["new_tokens"]}))
    print(f"counted {run.summary['new_tokens']:,} tokens into {store}", file=sys.stderr)
    return store


def command_args(name: str, store: Path, train: list[Path], heldout: Path, out: Path) -> list:
    """The command line (without ``--memory``) of one measured command."""
    return {"finalize": ["finalize", store, "--json"],
            "eval": ["eval", store, heldout, "--json"],
            "score": ["score", store, heldout, "--json"],
            "export --weights": ["export", store, out / "weights.safetensors", "--weights",
                                 "--force", "--json"],
            "refine": ["refine", store, *train, "--heldout", heldout, "--steps", 20,
                       "--rank", 64, "--json"]}[name]


def measure_command(args: list, memory: str, force: bool, code: str | None,
                    kill_above: int, timeout: float) -> tuple[object, str]:
    """Run one command with ``--memory`` (without, if it has no such option)."""
    extra = ["--memory", memory] + (["--force-memory"] if force else [])
    run = run_measured([*args, *extra], pythonpath=code, kill_above=kill_above, timeout=timeout)
    if run.returncode == 2 and "unrecognized arguments: --memory" in run.stderr:
        run = run_measured(args, pythonpath=code, kill_above=kill_above, timeout=timeout)
        return run, "no --memory option: run without it"
    return run, ""


def measure_all(memory: str, budget: int, work: Path, tokenizer: Path, code: str | None,
                force: bool, kill_above: int, timeout: float,
                text: tuple[list[Path], Path] | None = None,
                commands: list[str] = COMMANDS) -> list[dict]:
    """Every command of `COMMANDS` on copies of the counted store; one row each.
    ``text``: training files and a held-out file (default: `write_corpus`'s)."""
    if text is None:
        train, heldout = write_corpus(work)
        train = [train]
    else:
        train, heldout = text
    counted = counted_store(work, tokenizer, train, code)
    scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=work))
    finalized = scratch / "finalized.zarr"
    rows = []
    try:
        for name in COMMANDS:
            if name != "finalize" and name not in commands:
                continue
            store = scratch / "store.zarr"
            shutil.rmtree(store, ignore_errors=True)
            source = counted if name == "finalize" or not finalized.exists() else finalized
            shutil.copytree(source, store)
            run, note = measure_command(command_args(name, store, train, heldout, scratch),
                                        memory, force, code, kill_above, timeout)
            if name == "finalize" and run.returncode == 0:
                shutil.copytree(store, finalized)
            if name not in commands:
                continue
            if run.returncode < 0:
                note = (note + "; " if note else "") + (
                    f"killed above {mib(kill_above)}" if run.peak > kill_above else "timed out")
            elif run.returncode != 0:
                note = (note + "; " if note else "") + "failed: " + (
                    run.stderr.strip().splitlines() or ["?"])[-1][:200]
            rows.append({"command": name, "budget": budget, "tree_peak": run.tree_peak,
                         "maxrss": run.maxrss, "peak": run.peak, "cpu": run.cpu,
                         "returncode": run.returncode, "note": note,
                         "args": " ".join(["streamsolve", *run.args])})
            print(f"  {name}: peak {mib(run.peak)} (rc {run.returncode}) {note}",
                  file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table of `measure_all` rows."""
    lines = ["| command | budget | tree peak (sampled) | maxrss (time -v) | peak / budget | "
             "within | CPU s | note |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        within = "yes" if row["peak"] <= row["budget"] and row["returncode"] == 0 else "NO"
        lines.append(f"| {row['command']} | {mib(row['budget'])} | {mib(row['tree_peak'])} | "
                     f"{mib(row['maxrss'])} | {row['peak'] / row['budget']:.2f} | {within} | "
                     f"{row['cpu']:.1f} | {row['note']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.command_memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memory", default="400MB", help="budget given to every command")
    parser.add_argument("--force-memory", action="store_true", help="pass --force-memory too")
    parser.add_argument("--code", help="checkout whose streamsolve to run (default: this one)")
    parser.add_argument("--work", help="directory for the corpus and the counted store "
                        "(reused between runs; default: out/command-memory)")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the anthropic wheel's)")
    parser.add_argument("--train", nargs="+", type=Path,
                        help="training text (default: the even pydoc topics)")
    parser.add_argument("--heldout", type=Path, help="held-out text (default: the odd "
                        "pydoc topics; required with --train)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(COMMANDS)} "
                        "(finalize runs anyway: the others need its weights)")
    parser.add_argument("--kill-above", type=float, default=4.0,
                        help="kill a command above this multiple of the budget (default 4)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    args = parser.parse_args(argv)
    from dask.utils import parse_bytes

    try:
        budget = parse_bytes(args.memory)
    except ValueError:
        print(f"bench.command_memory: cannot read --memory {args.memory!r} (e.g. 400MB)",
              file=sys.stderr)
        return 2
    tokenizer = Path(args.tokenizer) if args.tokenizer else anthropic_tokenizer()
    if tokenizer is None or not tokenizer.exists():
        print(f"bench.command_memory: no 65k tokenizer: {PIP_HINT}, or give --tokenizer",
              file=sys.stderr)
        return 2
    work = Path(args.work or Path(__file__).resolve().parents[1] / "out" / "command-memory")
    work.mkdir(parents=True, exist_ok=True)
    code = str(Path(args.code).resolve()) if args.code else None
    print(f"code: {code or Path(__file__).resolve().parents[1]}; tokenizer: {tokenizer}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.train and not args.heldout:
        print("bench.command_memory: --train needs --heldout", file=sys.stderr)
        return 2
    text = ([p.resolve() for p in args.train], args.heldout.resolve()) if args.train else None
    rows = measure_all(args.memory, budget, work, tokenizer, code, args.force_memory,
                       int(args.kill_above * budget), args.timeout, text,
                       args.only.split(",") if args.only else COMMANDS)
    print(table(rows))
    for row in rows:
        print(f"- {row['command']}: `{row['args']}`")
    return 0 if all(r["peak"] <= budget and r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
