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
    ever contained ``needle`` while on the scheduler, i.e. what any client could read."""

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


def _record_tasks_containing(needle, dask_scheduler=None):
    dask_scheduler.add_plugin(_TaskRecorder(dask_scheduler, needle), name=_TaskRecorder.name)


def _recorded_tasks(dask_scheduler=None):
    return list(dask_scheduler.plugins[_TaskRecorder.name].hits)


def _stop_recording(dask_scheduler=None):
    dask_scheduler.remove_plugin(name=_TaskRecorder.name)


def test_credentials_never_reach_the_scheduler(dask_cluster, tmp_path, tokenizer_file):
    """--storage-options credentials with --scheduler are refused before anything is sent;
    the workers' own credentials serve the job; --send-credentials is the explicit opt-in."""
    s3fs = pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from distributed import Client

    address, _, _ = dask_cluster
    procs = Processes(tmp_path / "logs")
    try:
        endpoint = start_moto(procs)
        for bucket in ("corpus", "models"):
            create_bucket(endpoint, bucket)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="uploader", secret="uploader")
        for path in write_shards(tmp_path / "shards", n=2, per_shard=10):
            fs.put(str(path), f"corpus/shards/{path.name}")
        secret = json.dumps({"key": "SECRET", "secret": "SECRET2", "endpoint_url": endpoint})
        count = ["count", "s3://corpus/shards/", "--store", "s3://models/m.zarr",
                 "--tokenizer", tokenizer_file, "--scheduler", address, "--json"]
        with Client(address, timeout=f"{time_limit(10):.0f}s") as observer:
            observer.run_on_scheduler(_record_tasks_containing, "SECRET")
            try:
                refused = run_cli([*count, "--storage-options", secret], cwd=tmp_path,
                                  check=False)
                assert refused.returncode == 2, refused.stderr[-2000:]
                (line,) = refused.stderr.strip().splitlines()
                assert "(key, secret)" in line and "--send-credentials" in line
                assert "AWS_ACCESS_KEY_ID" in line and not re.search(r"\bSECRET2?\b", line)
                assert not fs.exists("models/m.zarr")

                counted = json_out(run_cli(
                    [*count, "--storage-options", json.dumps({"endpoint_url": endpoint})],
                    cwd=tmp_path))
                assert counted["new_tokens"] > 0
                assert observer.run_on_scheduler(_recorded_tasks) == []

                # the recorder does see credentials when they are sent on purpose
                run_cli([*count, "--storage-options", secret, "--send-credentials"],
                        cwd=tmp_path)
                assert observer.run_on_scheduler(_recorded_tasks)
            finally:
                observer.run_on_scheduler(_stop_recording)
    finally:
        procs.close()


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
# A stand-in for SLURM's sbatch: runs the job script right away in its own session.
set -eu
# (copy the script first: dask-jobqueue deletes its temporary file when sbatch returns)
cp "${@: -1}" "$FAKE_SLURM_DIR/job-$$.sh"
setsid bash "$FAKE_SLURM_DIR/job-$$.sh" >"$FAKE_SLURM_DIR/job-$$.log" 2>&1 < /dev/null &
echo "$!" >> "$FAKE_SLURM_DIR/jobs"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
for job in "$@"; do kill -TERM -- "-$job" 2>/dev/null || true; done
"""


@pytest.mark.slow
def test_slurm_cluster_through_a_fake_sbatch(tmp_path, tokenizer_file):
    """`--cluster slurm` end to end: dask-jobqueue writes the job script and calls `sbatch`
    (here a stand-in that runs it locally), the worker job joins, the command runs on it."""
    pytest.importorskip("dask_jobqueue")
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755 | stat.S_IEXEC)
    write_shards(tmp_path / "corpus", n=2, per_shard=30)
    env = child_env(PATH=f"{fake}{os.pathsep}{os.environ['PATH']}", FAKE_SLURM_DIR=fake)
    try:
        proc = run_cli(["count", str(tmp_path / "corpus"), "--store", str(tmp_path / "m.zarr"),
                        "--tokenizer", tokenizer_file, "--cluster", "slurm", "--jobs", "1",
                        "--cores", "1", "--memory", "1GiB", "--interface", "lo", "--json"],
                       env=env, timeout=180)
        result = json_out(proc)
        assert result["shards"] == 2 and result["new_tokens"] > 0
        assert (fake / "jobs").exists()  # a job was really submitted through sbatch
        assert ModelStore(tmp_path / "m.zarr").read_counts().tokens == result["new_tokens"]
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
        for job in ((fake / "jobs").read_text().split() if (fake / "jobs").exists() else []):
            try:
                os.killpg(int(job), 9)
            except (ProcessLookupError, PermissionError):
                pass


def test_compose_and_readme_publish_no_unauthenticated_scheduler():
    """docker/compose.yaml publishes nothing beyond 127.0.0.1 and never the scheduler's port;
    the README's cluster commands bind no scheduler to 0.0.0.0 and show TLS."""
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
    assert "--host 0.0.0.0" not in cluster
    assert "--tls-cert" in cluster and "tls://" in cluster and "--send-credentials" in cluster


def test_tls_scheduler_without_tls_settings_is_one_line(tmp_path):
    env = {k: v for k, v in child_env().items() if not k.startswith("DASK_DISTRIBUTED__COMM")}
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--scheduler", "tls://127.0.0.1:1",
                    "--connect-timeout", "2"], env=env, cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "tls://127.0.0.1:1" in proc.stderr and "DASK_DISTRIBUTED__COMM__TLS__CA_FILE" in proc.stderr
    assert "Traceback" not in proc.stderr
