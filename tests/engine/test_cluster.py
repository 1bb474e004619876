"""Running on a Dask cluster started the way a cluster is: `dask scheduler` and two
`dask worker` processes (separate commands, 127.0.0.1), then `streamsolve ... --scheduler`
as another process. Plus HPC batch jobs through dask-jobqueue (job scripts, and a fake
`sbatch` that really starts the worker job), and the errors a user sees."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.store.model_store import ModelStore

from ..conftest import time_limit
from ..deploy_helpers import (Processes, child_env, create_bucket, json_out, run_cli,
                             start_dask_cluster, start_moto, wait_for,
                             write_shards)


#: The workers' own object-store credentials (as docker/compose.yaml gives them): credentials
#: never travel inside a job (see test_credentials_never_reach_the_scheduler).
WORKER_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "workers-own-key",
                      "AWS_SECRET_ACCESS_KEY": "workers-own-secret",
                      "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """(address, workdir): a CLI-started scheduler + 2 workers whose cwd is ``workdir``."""
    root = tmp_path_factory.mktemp("cluster")
    workdir = root / "workers"
    workdir.mkdir()
    procs = Processes(root / "logs")
    try:
        address = start_dask_cluster(procs, workdir, n_workers=2,
                                     env=child_env(**WORKER_CREDENTIALS))
        yield address, workdir, procs
    finally:
        procs.close()


@pytest.mark.slow
def test_cli_started_cluster_solve_matches_local(dask_cluster, tokenizer_file, tmp_path):
    address, workdir, procs = dask_cluster
    write_shards(workdir / "corpus", n=4)
    client_dir = tmp_path / "client"  # no corpus here: only the workers can read it
    client_dir.mkdir()
    common = ["--tokenizer", tokenizer_file, "--radius", "2", "--json"]

    remote = run_cli(["solve", "corpus", "--store", "remote.zarr", "--scheduler", address,
                      *common], cwd=client_dir)
    summary = json_out(remote)
    assert summary["shards"] == 4 and summary["new_tokens"] > 10_000
    assert "heldout_perplexity" in summary
    assert "on worker tcp://127.0.0.1:" in remote.stderr  # forwarded from the job's worker
    assert "Newton passes split over 2 workers" in remote.stderr  # calibration spread
    assert not (client_dir / "remote.zarr").exists()  # the workers wrote the store

    local = run_cli(["solve", "corpus", "--store", "local.zarr", *common], cwd=workdir)
    assert json_out(local)["new_tokens"] == summary["new_tokens"]

    remote_counts = ModelStore(workdir / "remote.zarr").read_counts()
    local_counts = ModelStore(workdir / "local.zarr").read_counts()
    assert remote_counts.equal_counts(local_counts)
    assert remote_counts.tokens == summary["new_tokens"]

    # add a shard through DASK_SCHEDULER_ADDRESS, then finalize as a job on the cluster
    write_shards(workdir / "more", n=1, per_shard=20)
    env = child_env(DASK_SCHEDULER_ADDRESS=address)
    added = json_out(run_cli(["count", "more", "--store", "remote.zarr", "--json"],
                               env=env, cwd=client_dir))
    assert added["new_tokens"] > 0
    assert added["tokens"] == summary["new_tokens"] + added["new_tokens"]
    final = json_out(run_cli(["finalize", "remote.zarr", "--scheduler", address,
                                "--form", "column", "--json"], cwd=client_dir))
    assert final["form"] == "column"
    info = json_out(run_cli(["info", str(workdir / "remote.zarr"), "--json"]))
    assert info["weights"]["form"] == "column" and not info["weights"]["stale"]
    assert info["tokens"] == added["tokens"]
    procs.check_alive()


@pytest.mark.slow
def test_cluster_workers_read_shards_from_s3_and_write_the_store_there(dask_cluster, tmp_path,
                                                                      tokenizer_file):
    """The compose file's setup: shards and store on an object store, workers do the I/O."""
    s3fs = pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    address, _, _ = dask_cluster
    procs = Processes(tmp_path / "logs")
    try:
        endpoint = start_moto(procs)
        create_bucket(endpoint, "corpus")
        create_bucket(endpoint, "models")
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(**options)
        for path in write_shards(tmp_path / "shards", n=2, per_shard=30):
            fs.put(str(path), f"corpus/shards/{path.name}")
        so = json.dumps(options)
        on_workers = json.dumps({"endpoint_url": endpoint})  # they have their own credentials
        counted = json_out(run_cli(
            ["count", "s3://corpus/shards/", "--store", "s3://models/m.zarr", "--tokenizer",
             tokenizer_file, "--scheduler", address, "--storage-options", on_workers, "--json"],
            cwd=tmp_path))
        assert counted["shards"] == 2 and counted["new_tokens"] > 0
        run_cli(["finalize", "s3://models/m.zarr", "--scheduler", address,
                 "--storage-options", on_workers], cwd=tmp_path)
        info = json_out(run_cli(["info", "s3://models/m.zarr", "--storage-options", so,
                                 "--json"]))
        assert info["tokens"] == counted["new_tokens"] and not info["weights"]["stale"]
        local = api.count([str(p) for p in sorted((tmp_path / "shards").iterdir())],
                          str(tmp_path / "local.zarr"), tokenizer=tokenizer_file)
        assert ModelStore("s3://models/m.zarr", options).read_counts().equal_counts(
            ModelStore(local.store).read_counts())
    finally:
        procs.close()


class _TaskRecorder:
    """A scheduler plugin: the keys of every task whose spec (key, prefix, pickled run_spec)
    ever contained ``needle`` while on the scheduler, i.e. what any client could read; and
    the names of worker plugins (kept pickled on the scheduler) that contained it."""

    name = "streamsolve-test-task-recorder"

    def __init__(self, scheduler, needle: str):
        self.scheduler, self.needle, self.seen, self.hits = scheduler, needle.encode(), set(), []

    def transition(self, key, start, finish, *args, **kwargs):
        task = self.scheduler.tasks.get(key)
        if task is None or key in self.seen:
            return
        self.seen.add(key)
        from distributed.protocol.pickle import dumps

        text = dumps(task.run_spec) + str(key).encode() + task.prefix.name.encode()
        if self.needle in text:
            self.hits.append(str(key))
        for name, plugin in self.scheduler.worker_plugins.items():
            if self.needle in (plugin if isinstance(plugin, bytes) else dumps(plugin)):
                self.hits.append(f"worker plugin {name}")


def _record_tasks_containing(needle, dask_scheduler=None):
    dask_scheduler.add_plugin(_TaskRecorder(dask_scheduler, needle), name=_TaskRecorder.name)


def _recorded_tasks(dask_scheduler=None):
    return list(dask_scheduler.plugins[_TaskRecorder.name].hits)


def _stop_recording(dask_scheduler=None):
    dask_scheduler.remove_plugin(name=_TaskRecorder.name)


def _bearer_protected_server(directory, token: str):
    """An HTTP server on 127.0.0.1 serving ``directory`` only to requests carrying
    ``Authorization: Bearer TOKEN`` (401 otherwise); (server, url, counts of answers)."""
    import functools
    import http.server
    import threading

    answered = {"ok": 0, "refused": 0}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def _allowed(self):
            ok = self.headers.get("Authorization") == f"Bearer {token}"
            answered["ok" if ok else "refused"] += 1
            if not ok:
                self.send_error(401)
            return ok

        def do_GET(self):
            if self._allowed():
                super().do_GET()

        def do_HEAD(self):
            if self._allowed():
                super().do_HEAD()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", answered


def test_credentials_never_reach_the_scheduler(dask_cluster, tmp_path, tokenizer_file):
    """A corpus behind HTTP bearer authentication, counted as a job on the cluster: the token
    in --storage-options is refused in one line before anything is sent; in a user-only
    --storage-secrets file the workers read it themselves, and a second client that records
    every task spec the scheduler holds (and its worker plugins) never sees it."""
    pytest.importorskip("aiohttp")
    from distributed import Client

    token = "tok-9f2c1e7a55d0b3"
    address, _, _ = dask_cluster
    shards = write_shards(tmp_path / "served", n=2, per_shard=10)
    server, url, answered = _bearer_protected_server(tmp_path / "served", token)
    try:
        count = ["count", *[f"{url}/{p.name}" for p in shards], "--store",
                 str(tmp_path / "m.zarr"), "--tokenizer", tokenizer_file, "--scheduler",
                 address, "--json"]
        header = {"client_kwargs": {"headers": {"Authorization": f"Bearer {token}"}}}
        secrets = tmp_path / "home" / "secrets.json"
        secrets.parent.mkdir()
        secrets.write_text(json.dumps(header))
        secrets.chmod(0o600)
        with Client(address, timeout=f"{time_limit(10):.0f}s") as observer:
            observer.run_on_scheduler(_record_tasks_containing, token)
            try:
                refused = run_cli([*count, "--storage-options", json.dumps(header)],
                                  cwd=tmp_path, check=False)
                assert refused.returncode == 2, refused.stderr[-2000:]
                (line,) = refused.stderr.strip().splitlines()
                assert "--storage-options client_kwargs.headers.Authorization" in line
                assert "--storage-secrets" in line and token not in line
                assert answered["ok"] == 0  # refused before any request

                counted = json_out(run_cli([*count, "--storage-secrets", str(secrets)],
                                           cwd=tmp_path))
                assert counted["shards"] == 2 and counted["new_tokens"] > 0
                assert answered["ok"] > 0  # the workers sent the file's header
                assert observer.run_on_scheduler(_recorded_tasks) == []

                # the recorder does see a secret that is sent inside a task
                assert observer.submit(len, token, pure=False).result() == len(token)
                assert observer.run_on_scheduler(_recorded_tasks)
            finally:
                observer.run_on_scheduler(_stop_recording)
    finally:
        server.shutdown()


def _task_states(dask_scheduler=None):
    return {str(key): task.state for key, task in dask_scheduler.tasks.items()}


def _worker_task_states(dask_worker=None):
    return {str(key): task.state for key, task in dask_worker.state.tasks.items()}


def test_ctrl_c_cancels_the_job_on_the_cluster(dask_cluster, tmp_path, tokenizer_file):
    """SIGINT to `count --scheduler` exits 130 at once, and the job on the cluster stops:
    no task of it stays on the scheduler or the workers, and nothing is committed."""
    from distributed import Client

    address, workdir, _ = dask_cluster
    for path in write_shards(workdir / "interrupted-corpus", n=4):
        path.write_text(path.read_text() * 40)  # ~18 MB: tens of seconds on these workers
    with open(tmp_path / "stderr.log", "w") as stderr, Client(address, timeout=f"{time_limit(10):.0f}s") as observer:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamsolve", "count", "interrupted-corpus", "--store",
             "interrupted.zarr", "--tokenizer", tokenizer_file, "--scheduler", address],
            cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=stderr)
        try:
            wait_for(lambda: any(key.startswith("count-")
                                 for key in observer.run_on_scheduler(_task_states)),
                     120, "the job's shard tasks")
            proc.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            assert proc.wait(timeout=time_limit(30)) == 130
            assert time.monotonic() - interrupted < time_limit(10)  # not after the job
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        def job_gone():
            return not observer.run_on_scheduler(_task_states) and not any(
                observer.run(_worker_task_states).values())

        wait_for(job_gone, 60, "the cancelled job to stop")
    assert (tmp_path / "stderr.log").read_text().strip().splitlines()[-1] == \
        "streamsolve count: interrupted"
    assert not ModelStore(workdir / "interrupted.zarr").exists()  # nothing committed


@pytest.mark.slow
def test_errors_on_the_cluster_come_back_as_one_line(dask_cluster, tmp_path):
    address, workdir, _ = dask_cluster
    proc = run_cli(["count", "no-such-corpus", "--store", "x.zarr", "--scheduler", address],
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "no-such-corpus" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    ["count", "corpus", "--store", "x.zarr"],
    ["solve", "--store", "x.zarr"],
    ["finalize", "x.zarr"],
])
def test_unreachable_scheduler_fails_fast_naming_it(command, tmp_path):
    started = time.monotonic()
    proc = run_cli([*command, "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "2"],
                   cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "tcp://127.0.0.1:1" in proc.stderr
    assert "cannot reach the Dask scheduler" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < time_limit(30)


def test_unreachable_scheduler_from_environment(tmp_path):
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--connect-timeout", "1"],
                   env=child_env(DASK_SCHEDULER_ADDRESS="tcp://127.0.0.1:1"),
                   cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2 and "tcp://127.0.0.1:1" in proc.stderr


@pytest.mark.parametrize("kind,directive", [("slurm", "#SBATCH"), ("pbs", "#PBS")])
def test_cluster_script_prints_the_job_script(kind, directive, capsys):
    pytest.importorskip("dask_jobqueue")
    assert main(["cluster-script", "--cluster", kind, "--jobs", "3", "--cores", "4",
                 "--memory", "8GiB", "--walltime", "02:00:00", "--queue", "batch",
                 "--job-prologue", "source /opt/venv/bin/activate"]) == 0
    script = capsys.readouterr().out
    assert script.startswith("#!/usr/bin/env bash")
    assert directive in script and "02:00:00" in script and "batch" in script
    assert "source /opt/venv/bin/activate" in script
    assert "distributed.cli.dask_worker" in script and "--nthreads 4" in script
    if kind == "slurm":
        assert "#SBATCH --cpus-per-task=4" in script and "#SBATCH --mem=8G" in script


FAKE_SBATCH = """#!/usr/bin/env bash
# A stand-in for SLURM's sbatch: runs the job script in its own session, once
# $FAKE_SLURM_DIR/go exists (the test looks at the scheduler while the job is pending).
set -eu
# (copy the script first: dask-jobqueue deletes its temporary file when sbatch returns)
cp "${@: -1}" "$FAKE_SLURM_DIR/job-$$.sh"
setsid bash -c 'while [ ! -e "$FAKE_SLURM_DIR/go" ]; do sleep 0.1; done; exec bash "$0"' \
    "$FAKE_SLURM_DIR/job-$$.sh" >"$FAKE_SLURM_DIR/job-$$.log" 2>&1 < /dev/null &
echo "$!" >> "$FAKE_SLURM_DIR/jobs"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for job in "$@"; do kill -TERM -- "-$job" 2>/dev/null || true; done
"""


def _refused_by_tls_server(host: str, port: int, ca_file: str) -> str:
    """Handshake with the server at host:port as a TLS client that trusts its CA but has no
    certificate of its own; the server's refusal (an SSL error), or "" if it answers."""
    import socket
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False
    try:
        with socket.create_connection((host, port), timeout=10) as raw, \
                context.wrap_socket(raw) as tls:
            tls.sendall(b"\0" * 8)
            return "" if tls.recv(1) else "closed"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _connects(address: str, security=None) -> bool:
    from distributed import Client

    try:
        with Client(address, security=security, timeout="5s", set_as_default=False):
            return True
    except (OSError, TimeoutError, ValueError, TypeError):
        return False


def _probe_pending_cluster(fake, tls_dir, cli_pid):
    """While the worker job waits: the job script's scheduler is TLS-only on 127.0.0.1 and
    refuses every client without the cluster's certificate; the certificates live in a
    user-only directory; this process listens on nothing but 127.0.0.1."""
    import psutil
    from distributed.security import Security

    wait_for(lambda: list(fake.glob("job-*.sh")), 120, "the job script")
    script = next(fake.glob("job-*.sh")).read_text()
    (address,) = re.findall(r"distributed\.cli\.dask_worker (\S+)", script)
    assert address.startswith("tls://127.0.0.1:"), script
    paths = {opt: re.search(rf"{opt} (\S+)", script).group(1)
             for opt in ("--tls-ca-file", "--tls-cert", "--tls-key")}
    run_dir = os.path.dirname(paths["--tls-key"])
    assert os.path.dirname(run_dir) == str(tls_dir)
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(p).st_mode) for p in paths.values()} == {0o600}
    port = int(address.rsplit(":", 1)[1])

    assert not _connects(f"tcp://127.0.0.1:{port}")  # plain TCP
    assert not _connects(address, Security.temporary())  # TLS, someone else's certificate
    refusal = _refused_by_tls_server("127.0.0.1", port, paths["--tls-ca-file"])
    assert refusal, "the scheduler answered a TLS client without a certificate"
    assert _connects(address, Security(tls_ca_file=paths["--tls-ca-file"],
                                       tls_client_cert=paths["--tls-cert"],
                                       tls_client_key=paths["--tls-key"],
                                       require_encryption=True))
    listening = {c.laddr.ip for c in psutil.Process(cli_pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}, listening  # scheduler (lo) and dashboard
    return run_dir


@pytest.mark.slow
def test_slurm_cluster_through_a_fake_sbatch(tmp_path, tokenizer_file):
    """`--cluster slurm` end to end: dask-jobqueue writes the job script and calls `sbatch`
    (here a stand-in that runs it locally); the scheduler is TLS-only and refuses clients
    without the certificate, the worker job joins over TLS, the command runs on it."""
    pytest.importorskip("dask_jobqueue")
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755 | stat.S_IEXEC)
    shards = write_shards(tmp_path / "corpus", n=2, per_shard=30)
    # the corpus behind bearer authentication: the worker job (joining after the secrets
    # were registered) must read the token from --storage-secrets itself
    token = "tok-batch-4d1a97"
    server, url, answered = _bearer_protected_server(tmp_path / "corpus", token)
    shared = tmp_path / "shared-home"
    shared.mkdir()
    (shared / "secrets.json").write_text(json.dumps(
        {"client_kwargs": {"headers": {"Authorization": f"Bearer {token}"}}}))
    (shared / "secrets.json").chmod(0o600)
    tls_dir = shared / "tls"
    env = child_env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=fake)
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamsolve", "count", *[f"{url}/{p.name}" for p in shards],
             "--store", str(tmp_path / "m.zarr"), "--tokenizer", tokenizer_file,
             "--storage-secrets", str(shared / "secrets.json"), "--cluster", "slurm",
             "--jobs", "1", "--cores", "1", "--memory", "1GiB", "--interface", "lo",
             "--tls-dir", str(tls_dir), "--json"],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        run_dir = _probe_pending_cluster(fake, tls_dir, proc.pid)
        (fake / "go").touch()
        assert proc.wait(timeout=180) == 0, (tmp_path / "stderr").read_text()[-3000:]
        stderr = (tmp_path / "stderr").read_text()
        assert "on worker tls://127.0.0.1:" in stderr  # the job ran on a worker joined by TLS
        result = json.loads((tmp_path / "stdout").read_text().strip().splitlines()[-1])
        assert result["shards"] == 2 and result["new_tokens"] > 0
        assert ModelStore(tmp_path / "m.zarr").read_counts().tokens == result["new_tokens"]
        assert answered["ok"] > 0  # the worker sent the secrets file's header
        assert not os.path.exists(run_dir)  # the temporary certificate is gone with the run
        jobs = [int(j) for j in (fake / "jobs").read_text().split()]

        def gone():  # scancel was called when the command closed its cluster
            for job in jobs:
                try:
                    os.kill(job, 0)
                    return False
                except ProcessLookupError:
                    pass
            return True

        wait_for(gone, 30, "the fake SLURM job to end")
    finally:
        server.shutdown()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for job in ((fake / "jobs").read_text().split() if (fake / "jobs").exists() else []):
            try:
                os.killpg(int(job), 9)
            except (ProcessLookupError, PermissionError):
                pass


def test_compose_and_readme_publish_no_unauthenticated_scheduler():
    """docker/compose.yaml publishes nothing beyond 127.0.0.1 and never the scheduler's port;
    neither the README's cluster section nor the sbatch recipe runs a scheduler any host can
    reach without a certificate: TLS everywhere but on 127.0.0.1, secrets in a file."""
    yaml = pytest.importorskip("yaml")
    from ..deploy_helpers import REPO

    services = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]
    scheduler = services["scheduler"]["command"]
    port = scheduler[scheduler.index("--port") + 1]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            parts = str(mapping).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", \
                f"{name} publishes {mapping} on every interface of the host"
            assert not (name == "scheduler" and parts[-1] == port), \
                f"the scheduler's port {port} is published"
    assert "0.0.0.0" not in scheduler
    readme = (REPO / "README.md").read_text()
    cluster = readme[readme.index("## Running on a cluster"):]
    sbatch = (REPO / "pipelines" / "slurm" / "solve.sbatch").read_text()
    for text in (cluster, sbatch):
        commands = re.sub(r"\\\n\s*", " ", text)  # shell continuation lines joined
        for line in commands.splitlines():
            if re.match(r"\s*dask scheduler\b", line):  # TLS, or this machine only
                assert "--tls-cert" in line or "--host 127.0.0.1" in line, line
            assert "0.0.0.0" not in line.replace("never `0.0.0.0`", ""), line
        for address in re.findall(r"tcp://([^\s:`'\"]+)", text):
            assert address in ("127.0.0.1", "HOST"), f"plain tcp:// to {address}"
        assert "tls://" in text and "--storage-secrets" in text


def test_tls_scheduler_without_tls_settings_is_one_line(tmp_path):
    env = {k: v for k, v in child_env().items() if not k.startswith("DASK_DISTRIBUTED__COMM")}
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--scheduler", "tls://127.0.0.1:1",
                    "--connect-timeout", "2"], env=env, cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tls://127.0.0.1:1" in proc.stderr and "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in proc.stderr
    assert "Traceback" not in proc.stderr
