"""Helpers for the deployment tests: processes started the way a cluster operator starts them
(`dask scheduler`, `dask worker`, an S3-compatible server), on 127.0.0.1 only, always killed
(whole process groups) when the test ends, passed or failed."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .conftest import time_limit

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this interpreter's environment (dask, streamsolve, ...)."""
    path = BIN / name
    return str(path) if path.exists() else name


def child_env(**extra) -> dict:
    """The environment for child processes: this repo importable, tokenizer threads on."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc: subprocess.Popen, timeout: float = 10.0):
    """Terminate a process started with ``start_new_session=True`` and all its children
    (SIGKILL after ``timeout`` quiet-machine seconds, scaled by `time_limit`)."""
    timeout = time_limit(timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    else:  # the leader is gone; children may not be
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class Processes:
    """Start background processes in their own process groups; `close` kills them all."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        log.close()
        self.procs.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self):
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")

    def close(self):
        for _, proc in reversed(self.procs):
            kill_group(proc)


def wait_for(predicate, timeout: float, what: str, procs: Processes | None = None,
             interval: float = 0.2):
    """Poll ``predicate`` until it is true; ``timeout`` is a hang guard in quiet-machine
    seconds, scaled by `time_limit` for the machine's load."""
    limit = time_limit(timeout)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return
        if procs is not None:
            procs.check_alive()
        time.sleep(interval)
    raise TimeoutError(f"timed out after {limit:.0f} s waiting for {what}")


def start_dask_cluster(procs: Processes, workdir: Path, n_workers: int = 2,
                       env: dict | None = None) -> str:
    """`dask scheduler` + ``n_workers`` x `dask worker` on 127.0.0.1; returns the address.

    Workers run with ``workdir`` as their working directory (relative paths resolve there).
    """
    scheduler_file = procs.log_dir / "scheduler.json"
    env = env or child_env()
    procs.start("scheduler", [tool("dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                              "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                env=env, cwd=workdir)

    def scheduler_address() -> str | None:  # the file exists before dask has written it
        try:
            return json.loads(scheduler_file.read_text())["address"]
        except (FileNotFoundError, ValueError, KeyError):
            return None

    wait_for(scheduler_address, 60, "the dask scheduler", procs)
    address = scheduler_address()
    for i in range(n_workers):
        procs.start(f"worker-{i}", [tool("dask"), "worker", address, "--host", "127.0.0.1",
                                    "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                    "--memory-limit", "2GiB", "--name", f"worker-{i}"],
                    env=env, cwd=workdir)

    def workers_up():
        from distributed import Client

        with Client(address, timeout=f"{time_limit(10):.0f}s") as client:
            return len(client.scheduler_info(n_workers=-1)["workers"]) >= n_workers

    wait_for(workers_up, 90, f"{n_workers} dask workers", procs, interval=1.0)
    return address


def start_moto(procs: Processes, name: str = "moto") -> str:
    """An S3-compatible server (moto in server mode) on 127.0.0.1; returns its endpoint URL."""
    port = free_port()
    procs.start(name, [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env=child_env())
    endpoint = f"http://127.0.0.1:{port}"

    def up():
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    wait_for(up, 60, "the moto S3 server", procs)
    return endpoint


def create_bucket(endpoint: str, bucket: str):
    """``PUT /BUCKET`` (what docker/compose.yaml's create-bucket service does with curl)."""
    request = urllib.request.Request(f"{endpoint}/{bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=time_limit(10)) as response:
        assert response.status == 200, response.status


def run_cli(args: list[str], env: dict | None = None, cwd=None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
    """`streamsolve ARGS` as a separate process (``timeout``: a hang guard, `time_limit`)."""
    proc = subprocess.run([sys.executable, "-m", "streamsolve", *args], env=env or child_env(),
                          cwd=cwd, capture_output=True, text=True, timeout=time_limit(timeout),
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"streamsolve {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def json_out(proc: subprocess.CompletedProcess) -> dict:
    """The JSON object a `--json` command printed (its last stdout line).

    (The local Dask progress bar may also write to stdout when counting takes > 2 s.)
    """
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"no output on stdout; stderr:\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1])


def write_shards(directory: Path, n: int = 4, per_shard: int | None = None) -> list[Path]:
    """Real text (CPython's pydoc topics) split into ``n`` plain-text shards in ``directory``
    (``per_shard`` topics each, default all topics), as the ``sharded_corpus`` fixture writes them."""
    from .conftest import pydoc_documents, write_shards as write_corpus_shards

    documents = pydoc_documents()[: per_shard * n if per_shard else None]
    return write_corpus_shards(directory, n, "", documents)
