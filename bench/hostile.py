"""``python -m bench.hostile --out DIR [--only NAME,...]``: the hostile inputs and faults of
issues 21 and 26, each run through the real CLI (``python -m streamsolve``) in a fresh
folder under ``DIR``, one table row each: case, command, exit code, outcome, seconds.

An outcome that is not what the issue asks for starts with ``UNEXPECTED``; the exit status
is 1 when any does. Re-runnable: every case builds what it needs (one small store, built
once and copied per case).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
#: Flags of every store built here: small and quick.
BUILD = ["--vocab-size", "1000", "--radius", "2", "--quiet"]
#: A logging line on stderr (``HH:MM:SS LEVEL logger: message``), not an error.
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")


class Run(NamedTuple):
    command: str
    code: int
    out: str
    err: str
    seconds: float  # wall
    cpu: float = 0.0  # user + sys of the command's processes


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli(folder: Path, *args, timeout: float = 900, user: int | None = None) -> Run:
    """``streamsolve ARGS`` in ``folder`` (this checkout's code; as ``user`` if given), timed."""
    if user is not None:
        return _as_user(folder, user, [str(a) for a in args])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, "-m", "streamsolve", *map(str, args)], cwd=folder,
                          capture_output=True, timeout=timeout, env=env)
    return Run("streamsolve " + " ".join(map(str, args)), proc.returncode,
               proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
               time.perf_counter() - started, _children_cpu() - cpu)


def _as_user(folder: Path, user: int, args: list[str]) -> Run:
    """``streamsolve.cli.main(args)`` in a forked child whose effective user is ``user``.

    The interpreter's library may be readable by root only, so the child first runs the
    same command as root on a readable copy of the folder's corpus (``warm``; every module
    the command imports is then loaded), then drops to ``user`` and runs it for real."""
    streams = [folder / "stdout", folder / "stderr"]
    started, cpu = time.perf_counter(), _children_cpu()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            os.chdir(folder)
            shutil.copytree(args[1], "warm", ignore=shutil.ignore_patterns("sub"))
            from streamsolve.cli import main as streamsolve

            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1), os.dup2(null, 2)
            streamsolve([args[0], "warm", "--store", "warm.zarr", *args[4:]])
            for fd, path in zip((1, 2), streams):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT, 0o666), fd)
            os.setegid(user), os.seteuid(user)
            code = streamsolve(args)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out, err = (path.read_text(errors="replace") for path in streams)
    return Run("streamsolve " + " ".join(args) + f"  (as uid {user})", code, out, err,
               time.perf_counter() - started, _children_cpu() - cpu)  # the warm-up's too


def refused(run: Run, *words: str) -> str:
    """'refused in one line: ...' when ``run`` exited 2 with one error line on stderr holding
    ``words`` (log lines of skipped shards beside it are counted, not errors); else what
    went wrong."""
    lines = run.err.strip().splitlines()
    errors = [line for line in lines if not LOG_LINE.match(line)]
    if run.code == 2 and len(errors) == 1 and all(w in errors[0] for w in words):
        logged = f" (+{len(lines) - 1} log line)" if len(lines) > 1 else ""
        return f"refused in one line{logged}: " + errors[0][:110]
    return f"UNEXPECTED: exit {run.code}, {len(lines)} stderr lines: {(lines or [''])[-1][:110]}"


def tree(path: Path) -> str:
    """Digest of every file under ``path`` (names and bytes), or of the file itself."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        digest.update(str(p.relative_to(path.parent)).encode() + p.read_bytes())
    return digest.hexdigest()


def text(n_bytes: int = 200_000, skip: int = 0) -> str:
    """Real English-ish text: CPython's pydoc topics (0.47 MB in all)."""
    from pydoc_data.topics import topics

    body = "\n\n".join(topics[k] for k in sorted(topics))
    return body[skip:skip + n_bytes] + "\n"


def store_copy(out: Path, folder: Path) -> Path:
    """A copy of the small finalized store (built once under ``out``) in ``folder``."""
    base = out / "base" / "m.zarr"
    if not (base / "zarr.json").exists():
        (out / "base").mkdir(parents=True, exist_ok=True)
        (out / "base" / "small.txt").write_text(text())
        run = cli(out / "base", "solve", "small.txt", "--store", "m.zarr", *BUILD)
        if run.code:
            raise RuntimeError(f"cannot build the base store: {run.err.strip()[-300:]}")
    shutil.copytree(base, folder / "m.zarr")
    return folder / "m.zarr"


def kept(store: Path, before: str, run: Run, *words: str) -> tuple[Run, str]:
    """The row of a run that must be refused and leave ``store`` as it was, ``info`` working."""
    intact = tree(store) == before and cli(store.parent, "info", store.name).code == 0
    return run, refused(run, *words) + ("; old store intact" if intact else "; UNEXPECTED: store changed")


# -- the cases: each takes (out, folder) and returns (run, outcome) ----------------------------

def overwrite_case(make_input, *extra: str):
    """``solve INPUT --store m.zarr --overwrite`` over a good store: refused, store intact."""
    def case(out: Path, folder: Path):
        store = store_copy(out, folder)
        before = tree(store)
        name = make_input(folder)
        return kept(store, before, cli(folder, "solve", name, "--store", "m.zarr",
                                       "--overwrite", *extra, "--quiet"))
    return case


def _empty(folder: Path) -> str:
    (folder / "empty.txt").write_bytes(b"")
    return "empty.txt"


def _small(folder: Path) -> str:
    (folder / "small.txt").write_text(text(50_000, 1000))
    return "small.txt"


def _bad_gz(folder: Path) -> str:
    import gzip

    data = gzip.compress(text(50_000).encode())
    (folder / "bad.txt.gz").write_bytes(data[:len(data) // 2] + b"\0garbage" * 100)
    return "bad.txt.gz"


def _jsonl_without_text(folder: Path) -> str:
    lines = [json.dumps({"body": line}) for line in text(20_000).splitlines() if line]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return "docs.jsonl"


def _bad_tokenizer(folder: Path) -> str:
    (folder / "tok.json").write_text('{"model": "not a tokenizer"}')
    return _small(folder)


def export_onto_file(force: bool):
    def case(out: Path, folder: Path):
        store_copy(out, folder)
        notes = folder / "notes.txt"
        notes.write_text("my notes\n")
        run = cli(folder, "export", "m.zarr", "notes.txt", "--weights", "--quiet",
                  *(["--force"] if force else []))
        if force:
            replaced = run.code == 0 and notes.read_bytes() != b"my notes\n"
            return run, "replaced with --force" if replaced else f"UNEXPECTED: {refused(run)}"
        intact = notes.read_text() == "my notes\n"
        return run, refused(run, "notes.txt") + ("; file intact" if intact else "; UNEXPECTED: file changed")
    return case


def store_inside_corpus(out: Path, folder: Path):
    """Issue 21.3: ``cd c && solve . --store model.zarr``, then ``count .``."""
    corpus = folder / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text(text(60_000))
    (corpus / "b.txt").write_text(text(60_000, 60_000))
    first = cli(corpus, "solve", ".", "--store", "model.zarr", *BUILD)
    if first.code:
        return first, f"UNEXPECTED: solve: {refused(first)}"
    paths = sorted(e["path"] for e in json.loads(
        (corpus / "model.zarr" / "zarr.json").read_text())["attributes"]["shards"])
    again = cli(corpus, "count", ".", "--store", "model.zarr", "--json")
    again = again._replace(command=f"{first.command}; {again.command}",
                           seconds=first.seconds + again.seconds,
                           cpu=first.cpu + again.cpu)
    if again.code or paths != ["./a.txt", "./b.txt"]:
        return again, f"UNEXPECTED: shards {paths}, count: {refused(again)}"
    skipped = sorted(json.loads(again.out.strip().splitlines()[-1])["skipped_reasons"])
    return again, f"shards {paths}; count . adds nothing, skips {skipped}"


def urandom_junk(out: Path, folder: Path):
    """Issue 21.4: 2 MB of random bytes without NUL: skipped as not text, quickly."""
    (folder / "junk.txt").write_bytes(os.urandom(2_000_000).replace(b"\0", b""))
    run = cli(folder, "solve", "junk.txt", "--store", "j.zarr", "--quiet")
    lines = run.err.strip().splitlines()
    ok = (run.code == 2 and "not text" in lines[-1] and "Traceback" not in run.err
          and run.cpu < 10 and not (folder / "j.zarr.lock").exists())
    outcome = (f"skipped: not text ({len(lines)} stderr lines, the last: {lines[-1][:80]}); "
               f"{run.cpu:.1f} CPU-s; lock {'left' if (folder / 'j.zarr.lock').exists() else 'none left'}")
    return run, outcome if ok else "UNEXPECTED: " + outcome


def sigterm_training(out: Path, folder: Path):
    """Issue 21.4: SIGTERM while the tokenizer trains (a 3.7 MB corpus, V = 8192)."""
    (folder / "big.txt").write_text(text(10**7) * 8)
    args = ["solve", "big.txt", "--store", "t.zarr", "--vocab-size", "8192", "--quiet"]
    cpu = _children_cpu()
    proc = subprocess.Popen([sys.executable, "-m", "streamsolve", *args], cwd=folder,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    lock = folder / "t.zarr.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # into stage 1: the trainer runs
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    seconds = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace").strip()
    run = Run("streamsolve " + " ".join(args) + "  (SIGTERM 2 s into training)",
              proc.returncode, "", err, seconds, _children_cpu() - cpu)
    ok = seconds < 2 and not lock.exists() and "Traceback" not in err
    outcome = (f"stopped {seconds:.2f} s after SIGTERM, lock {'left' if lock.exists() else 'removed'}"
               f", stderr: {err.splitlines()[-1][:70] if err else '(none)'}")
    return run, outcome if ok else "UNEXPECTED: " + outcome


def copy_then_edit(out: Path, folder: Path):
    """Issue 21.5: a copy of an ingested file, then edited."""
    (folder / "c").mkdir()
    (folder / "c" / "a.txt").write_text(text(60_000))
    first = cli(folder, "count", "c", "--store", "m.zarr", *BUILD)
    shutil.copy(folder / "c" / "a.txt", folder / "c" / "copy.txt")
    second = cli(folder, "count", "c", "--store", "m.zarr", "--json")
    with open(folder / "c" / "copy.txt", "a") as handle:
        handle.write("One more line, edited in the copy.\n")
    before = tree(folder / "m.zarr")
    third = cli(folder, "count", "c", "--store", "m.zarr", "--quiet")
    if first.code or second.code:
        return second, f"UNEXPECTED: {refused(first)} / {refused(second)}"
    outcome = refused(third, "copy.txt", "--allow-changed")
    intact = tree(folder / "m.zarr") == before
    return third._replace(command="count c; cp c/a.txt c/copy.txt; count c; edit c/copy.txt; "
                          + third.command), outcome + ("; counts intact" if intact else "; UNEXPECTED: store changed")


def per_token_head(out: Path, folder: Path):
    """Issue 21.6: ``score --per-token | head -3``."""
    store_copy(out, folder)
    (folder / "t.txt").write_text(text(20_000))
    command = f"{sys.executable} -m streamsolve score m.zarr t.txt --per-token | head -3"
    started, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(["bash", "-c", command + "; exit ${PIPESTATUS[0]}"], cwd=folder,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    err = proc.stderr.decode(errors="replace")
    run = Run("streamsolve score m.zarr t.txt --per-token | head -3", proc.returncode,
              "", err, time.perf_counter() - started, _children_cpu() - cpu)
    lines = len(proc.stdout.splitlines())
    ok = proc.returncode == 0 and not err.strip() and lines == 3
    return run, ("exit 0 quietly, 3 lines" if ok else f"UNEXPECTED: {lines} lines, stderr {err[-100:]!r}")


def memory_budget(budget: str):
    """Issue 21.7: a ``--memory`` above the RAM or below one process's base."""
    def case(out: Path, folder: Path):
        _small(folder)
        run = cli(folder, "count", "small.txt", "--store", "m.zarr", "--memory", budget)
        gone = not (folder / "m.zarr").exists()
        return run, refused(run, budget) + ("; no store made" if gone else "; UNEXPECTED: store made")
    return case


def edited_attributes(edit, words: tuple[str, ...]):
    """Issue 26 F1/F2/F4: a hand edit of ``zarr.json``'s attributes; ``count`` is refused
    and the counts are not deleted."""
    def case(out: Path, folder: Path):
        store = store_copy(out, folder)
        node = json.loads((store / "zarr.json").read_text())
        edit(node["attributes"])
        (store / "zarr.json").write_text(json.dumps(node, indent=2))
        before = tree(store)
        _small(folder)
        run = cli(folder, "count", "small.txt", "--store", "m.zarr", "--quiet")
        untouched = tree(store) == before  # nothing deleted: `info` is refused too, rightly
        return run, refused(run, *words) + (
            "; store files untouched" if untouched else "; UNEXPECTED: store changed")
    return case


def _one_digit(attrs: dict) -> None:
    """The first digit of the calibration's beta (or of the token total) changed."""
    beta = attrs.get("weights", {}).get("calibration", {}).get("beta")
    if beta:
        value = repr(beta[0])
        digit = next(i for i, c in enumerate(value) if c.isdigit() and c != "0")
        beta[0] = float(value[:digit] + str((int(value[digit]) % 9) + 1) + value[digit + 1:])
    else:
        attrs["counts"]["tokens"] += 1


def _retired_counts(attrs: dict) -> None:
    """A retired entry naming all of ``counts``, the digest dropped (a legacy store)."""
    attrs.pop("attributes_sha256", None)
    attrs.setdefault("retired", {})["counts"] = "2026-01-01T00:00:00+00:00"


def lock_symlink(out: Path, folder: Path):
    """Issue 26 S4: ``m.zarr.lock`` is a symlink to a user's file."""
    store = store_copy(out, folder)
    victim = folder / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, str(store) + ".lock")
    _small(folder)
    run = cli(folder, "count", "small.txt", "--store", "m.zarr", "--quiet")
    intact = victim.read_text() == "precious\n"
    return run, (refused(run, "lock") if run.code else "exit 0") + (
        "; target untouched" if intact else "; UNEXPECTED: target overwritten")


def long_line_eval_vs_score(out: Path, folder: Path):
    """Issue 26: a 3 MB single line; ``eval`` and ``score`` give the same figures."""
    store_copy(out, folder)
    line = (" ".join(text(10**7).split()) + " ") * 7  # the topics are 0.43 MB
    line = line[:3_000_000]
    (folder / "line.txt").write_text(line + "\n")
    evaluated = cli(folder, "eval", "m.zarr", "line.txt", "--json", "--memory", "1GB")
    scored = cli(folder, "score", "m.zarr", "line.txt", "--quiet", "--memory", "1GB")
    if evaluated.code or scored.code:
        return scored, f"UNEXPECTED: {refused(evaluated)} / {refused(scored)}"
    a = json.loads(evaluated.out.strip().splitlines()[-1])
    b = json.loads(scored.out.strip().splitlines()[-1])
    same = a["tokens"] == b["tokens"] and a["bytes"] == b["bytes"] and \
        abs(a["cross_entropy"] - b["cross_entropy"]) <= 1e-12 * abs(a["cross_entropy"])
    run = scored._replace(command="eval / score m.zarr line.txt --memory 1GB",
                          seconds=evaluated.seconds + scored.seconds,
                          cpu=evaluated.cpu + scored.cpu)
    figures = f"{a['tokens']} tokens, CE {a['cross_entropy']:.6f} / {b['cross_entropy']:.6f}"
    return run, ("same figures: " if same else "UNEXPECTED: different: ") + figures


def corpus_folder_case(damage, expect: str):
    """A corpus folder with a fault (``damage(folder)``); ``count`` lists it as skipped."""
    def case(out: Path, folder: Path):
        corpus = folder / "c"
        (corpus / "sub").mkdir(parents=True)
        (corpus / "a.txt").write_text(text(30_000))
        (corpus / "sub" / "b.txt").write_text(text(30_000, 30_000))
        store_copy(out, folder)  # its tokenizer: no trainer child to start as another user
        cli(folder, "export", "m.zarr", "--tokenizer", "tok.json")
        shutil.rmtree(folder / "m.zarr")
        user = damage(corpus)
        run = cli(folder, "count", "c", "--store", "m.zarr", "--json", "--tokenizer", "tok.json",
                  "--radius", "2", user=user)
        (corpus / "sub").chmod(0o755)
        if run.code:
            return run, f"UNEXPECTED: {refused(run)}"
        result = json.loads(run.out.strip().splitlines()[-1])
        reasons = [f"{os.path.relpath(p, 'c')}: {r}" for p, r in result["skipped_reasons"].items()
                   if expect in r]
        return run, (f"{result['shards']} shards; skipped {reasons}" if reasons
                     else f"UNEXPECTED: skipped {result['skipped_reasons']}")
    return case


def _symlink_loop(corpus: Path) -> None:
    os.symlink("..", corpus / "sub" / "up")


def _unreadable(corpus: Path) -> int | None:
    """``c/sub`` unreadable; as root (who reads any directory) the run is ``nobody``'s."""
    (corpus / "sub").chmod(0)
    if os.geteuid() != 0:
        return None
    for path in [corpus.parent, *corpus.rglob("*"), corpus]:
        os.chown(path, 65534, 65534)
    return 65534


def scheduler_garbage(out: Path, folder: Path):
    """Issue 26: a garbage scheduler address."""
    _small(folder)
    run = cli(folder, "count", "small.txt", "--store", "m.zarr", "--scheduler", "tcp://::nope::x")
    return run, refused(run, "scheduler")


CASES = {
    "overwrite-empty": overwrite_case(_empty),
    "overwrite-vocab-size": overwrite_case(_small, "--vocab-size", "1000000000"),
    "overwrite-tokenizer": overwrite_case(_bad_tokenizer, "--tokenizer", "tok.json"),
    "overwrite-corrupt-gz": overwrite_case(_bad_gz),
    "overwrite-jsonl-no-text": overwrite_case(_jsonl_without_text),
    "export-no-force": export_onto_file(False),
    "export-force": export_onto_file(True),
    "store-inside-corpus": store_inside_corpus,
    "urandom-junk": urandom_junk,
    "sigterm-training": sigterm_training,
    "copy-then-edit": copy_then_edit,
    "per-token-head": per_token_head,
    "memory-10TB": memory_budget("10TB"),
    "memory-1MB": memory_budget("1MB"),
    "attributes-one-digit": edited_attributes(_one_digit, ("m.zarr",)),
    "retired-counts": edited_attributes(_retired_counts, ("retired",)),
    "lock-symlink": lock_symlink,
    "long-line-eval-score": long_line_eval_vs_score,
    "symlink-loop": corpus_folder_case(_symlink_loop, "loop"),
    "unreadable-dir": corpus_folder_case(_unreadable, "read"),
    "scheduler-garbage": scheduler_garbage,
}


def run_case(name: str, out: Path) -> tuple[str, str, int, str, float, float]:
    """Run one case in a fresh folder ``out/NAME``: ``(case, command, exit code, outcome,
    wall seconds, CPU seconds)``; an error of the case itself is an UNEXPECTED outcome."""
    folder = out / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        run, outcome = CASES[name](out, folder)
    except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
        return name, "", -1, f"UNEXPECTED: the case failed: {type(exc).__name__}: {exc}", 0, 0
    return name, run.command, run.code, outcome, run.seconds, run.cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--out", required=True, help="a scratch folder (cases run under it)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(CASES)}")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(CASES)
    rows = ["| case | command | exit | outcome | wall s | CPU s |", "|---|---|---|---|---|---|"]
    print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {len(names)} cases under "
          f"{out}; CPU s: user + sys of the command's processes (where measured)", flush=True)
    print("\n".join(rows), flush=True)
    for name in names:
        case, command, code, outcome, seconds, cpu = run_case(name, out)
        rows.append(f"| {case} | `{command}` | {code} | {outcome} | {seconds:.1f} | {cpu:.1f} |")
        print(rows[-1], flush=True)
    (out / "hostile.md").write_text("\n".join(rows) + "\n")
    return 1 if any("UNEXPECTED" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
