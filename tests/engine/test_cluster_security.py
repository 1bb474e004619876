"""Cluster security: credentials never travel inside a job (refused in one line naming the
option, or read by the workers from a user-only file), and the batch-job scheduler that
``--cluster`` starts is TLS-only on one interface, with its dashboard on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re

import pytest

from streamsolve.cli import main

from ..deploy_helpers import child_env, run_cli

SECRET = "Sup3rSecretValue"


@pytest.mark.parametrize("options, urls, named", [
    ({"key": SECRET, "secret": SECRET}, [], "--storage-options key, --storage-options secret"),
    ({"client_kwargs": {"headers": {"X-Api-Key": SECRET}}}, [],
     "--storage-options client_kwargs.headers.X-Api-Key"),
    ({"client_kwargs": {"headers": {"Cookie": f"session={SECRET}"}}}, [],
     "--storage-options client_kwargs.headers.Cookie"),
    ({"client_kwargs": {"headers": {"Authorization": f"Bearer {SECRET}"}}}, [],
     "--storage-options client_kwargs.headers.Authorization"),
    ({"endpoint_url": f"https://minio:{SECRET}@minio.example.org:9000"}, [],
     "--storage-options endpoint_url"),
    ({"config_kwargs": {"proxies": {"https": f"http://me:{SECRET}@proxy:3128"}}}, [],
     "--storage-options config_kwargs.proxies.https"),
    ({"s3_additional_kwargs": {"SSECustomerKey": SECRET}}, [],
     "--storage-options s3_additional_kwargs.SSECustomerKey"),
    ({"sas_token": SECRET}, [], "--storage-options sas_token"),
    ({}, ["--store", f"s3://{SECRET}@bucket/m.zarr"], "--store"),
    ({}, [f"https://files.example.org/shard.txt?X-Amz-Credential=AK&X-Amz-Signature={SECRET}"],
     "CORPUS"),
    ({}, [f"https://files.example.org/shard.txt?sv=2022&sig={SECRET}"], "CORPUS"),
])
def test_credentials_are_refused_before_anything_is_sent(options, urls, named, tmp_path):
    """Secrets in --storage-options (any depth, header values, URLs with a password) or in a
    URL (user@, signed query) stop a --scheduler command: one line naming where they are,
    never the value, and nothing is connected to."""
    store = [] if "--store" in urls else ["--store", "x.zarr"]
    corpus = [u for u in urls if u.startswith("https://")] or ["corpus"]
    rest = [u for u in urls if not u.startswith("https://")]
    proc = run_cli(["count", *corpus, *store, *rest, "--storage-options", json.dumps(options),
                    "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "30"],
                   cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert named in line and "--storage-secrets" in line, line
    assert SECRET not in line and "cannot reach" not in line  # refused before connecting


def test_send_credentials_is_gone_with_a_pointer_to_the_file(tmp_path):
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--scheduler", "tcp://127.0.0.1:1",
                    "--send-credentials"], cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "--send-credentials" in line and "--storage-secrets" in line


def test_non_secret_options_are_not_refused(tmp_path):
    """endpoint_url, region, anon and harmless headers go through (here: to an unreachable
    scheduler, which is the next thing the command reports)."""
    options = {"endpoint_url": "https://minio.example.org:9000", "anon": False,
               "client_kwargs": {"region_name": "eu-west-1",
                                 "headers": {"User-Agent": "streamsolve"}},
               "token": "anon"}
    proc = run_cli(["count", "s3://bucket/shards/", "--store", "s3://bucket/m.zarr",
                    "--storage-options", json.dumps(options), "--scheduler",
                    "tcp://127.0.0.1:1", "--connect-timeout", "2"], cwd=tmp_path, check=False,
                   timeout=60)
    assert proc.returncode == 2 and "cannot reach the Dask scheduler" in proc.stderr


@pytest.mark.parametrize("mode, message", [(0o644, "chmod 600"), (0o640, "chmod 600")])
def test_storage_secrets_file_readable_by_others_is_refused(mode, message, tmp_path):
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"key": SECRET, "secret": SECRET}))
    secrets.chmod(mode)
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--storage-secrets", str(secrets),
                    "--scheduler", "tcp://127.0.0.1:1"], cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert str(secrets) in line and message in line and SECRET not in line


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"), ("[1, 2]", "a JSON object"),
])
def test_storage_secrets_file_malformed_is_one_line(content, message, tmp_path):
    secrets = tmp_path / "secrets.json"
    secrets.write_text(content)
    secrets.chmod(0o600)
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--storage-secrets", str(secrets)],
                   cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert str(secrets) in line and message in line


def test_cluster_script_is_tls_on_one_interface(capsys, monkeypatch, tmp_path):
    """The job script cluster-script prints connects over TLS with certificate files, to a
    scheduler on this host's primary address (never 0.0.0.0, never plain tcp://); the
    temporary certificate went to ~/.streamsolve/tls and is gone with the scheduler."""
    pytest.importorskip("dask_jobqueue")
    psutil = pytest.importorskip("psutil")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["cluster-script", "--cluster", "slurm", "--cores", "2", "--memory", "1GiB",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    script = out["job_script"]
    (address,) = re.findall(r"distributed\.cli\.dask_worker (\S+)", script)
    assert address.startswith("tls://"), script
    host = address[len("tls://"):].rsplit(":", 1)[0]
    assert host not in ("0.0.0.0", "", "[::]")
    non_loopback = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                    if a.family.name == "AF_INET" and not a.address.startswith("127.")}
    if non_loopback:
        assert host in non_loopback
    for option in ("--tls-ca-file", "--tls-cert", "--tls-key"):
        path = re.search(rf"{option} (\S+)", script).group(1)
        assert path.startswith(str(tmp_path / ".streamsolve" / "tls")) and not os.path.exists(path)
    assert out["dashboard"].startswith("http://127.0.0.1:")


def test_cluster_script_with_an_interface_and_user_certificates(tmp_path, capsys):
    pytest.importorskip("dask_jobqueue")
    from distributed.security import Security

    temporary = Security.temporary()
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    cert.write_text(temporary.tls_ca_file)
    key.write_text(temporary.tls_scheduler_key)
    key.chmod(0o600)
    assert main(["cluster-script", "--cluster", "pbs", "--interface", "lo", "--tls-ca-file",
                 str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]) == 0
    script = capsys.readouterr().out
    assert "tls://127.0.0.1:" in script
    assert f"--tls-ca-file {cert}" in script and f"--tls-key {key}" in script

    key.chmod(0o644)  # a key others can read protects nothing
    assert main(["cluster-script", "--cluster", "pbs", "--interface", "lo", "--tls-ca-file",
                 str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert str(key) in line and "chmod 600" in line


def test_cluster_refuses_credentials_before_submitting_jobs(tmp_path):
    """--cluster: refused before any scheduler or batch job exists (no sbatch on PATH here:
    reaching dask-jobqueue would fail differently)."""
    pytest.importorskip("dask_jobqueue")
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--cluster", "slurm",
                    "--storage-options", json.dumps({"secret": SECRET})], cwd=tmp_path,
                   env=child_env(PATH="/usr/bin:/bin", HOME=str(tmp_path)), check=False,
                   timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "--storage-options secret" in line and "--cluster slurm" in line
    assert SECRET not in line and not (tmp_path / ".streamsolve").exists()


def test_the_jobs_task_carries_no_local_only_option():
    """The job's task (kept by the scheduler) has no job prologue, certificate path or
    secrets-file path: those only matter in the submitting process."""
    from streamsolve.cli import build_parser
    from streamsolve.engine.cluster import shipped_args

    args = build_parser().parse_args([
        "count", "corpus", "--store", "x.zarr", "--cluster", "slurm", "--job-prologue",
        f"export TOKEN={SECRET}", "--tls-ca-file", "/p/ca", "--tls-cert", "/p/c",
        "--tls-key", "/p/k", "--storage-secrets", "/p/s.json", "--dashboard-address", ":8787"])
    shipped = shipped_args(args)
    assert SECRET not in repr(vars(shipped)) and "/p/" not in repr(vars(shipped))
    assert shipped.store == "x.zarr" and shipped.corpus == ["corpus"]
    assert args.job_prologue == [f"export TOKEN={SECRET}"]  # the caller's args untouched
