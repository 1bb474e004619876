"""Running on a Dask cluster started the way a cluster is: `dask scheduler` and two
`dask worker` processes (separate commands, 127.0.0.1), then `streamsolve ... --scheduler`
as another process. Plus HPC batch jobs through dask-jobqueue (job scripts, and a fake
`sbatch` that really starts the worker job), and the errors a user sees."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from streamsolve import api
from streamsolve.cli import main
from streamsolve.store.model_store import ModelStore

from .deploy_helpers import (Processes, child_env, create_bucket, json_out, run_cli,
                             start_dask_cluster, start_moto, wait_for,
                             write_shards)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """(address, workdir): a CLI-started scheduler + 2 workers whose cwd is ``workdir``."""
    root = tmp_path_factory.mktemp("cluster")
    workdir = root / "workers"
    workdir.mkdir()
    procs = Processes(root / "logs")
    try:
        address = start_dask_cluster(procs, workdir, n_workers=2)
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
        counted = json_out(run_cli(
            ["count", "s3://corpus/shards/", "--store", "s3://models/m.zarr", "--tokenizer",
             tokenizer_file, "--scheduler", address, "--storage-options", so, "--json"],
            cwd=tmp_path))
        assert counted["shards"] == 2 and counted["new_tokens"] > 0
        run_cli(["finalize", "s3://models/m.zarr", "--scheduler", address,
                 "--storage-options", so], cwd=tmp_path)
        info = json_out(run_cli(["info", "s3://models/m.zarr", "--storage-options", so,
                                 "--json"]))
        assert info["tokens"] == counted["new_tokens"] and not info["weights"]["stale"]
        local = api.count([str(p) for p in sorted((tmp_path / "shards").iterdir())],
                          str(tmp_path / "local.zarr"), tokenizer=tokenizer_file)
        assert ModelStore("s3://models/m.zarr", options).read_counts().equal_counts(
            ModelStore(local.store).read_counts())
    finally:
        procs.close()


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
    assert time.monotonic() - started < 30


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
