"""Corpora and stores on an S3-compatible object store (moto in server mode, started by the
tests on 127.0.0.1): shards read from S3, a store written to S3 and read back by `eval`,
`info` and `export`, `--storage-options` passed through to fsspec and Zarr, and the errors
for a missing bucket and wrong credentials."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from streamsolve import api  # noqa: E402
from streamsolve.store.model_store import ModelStore  # noqa: E402

from .conftest import time_limit  # noqa: E402
from .deploy_helpers import (Processes, child_env, create_bucket, json_out,  # noqa: E402
                             run_cli, start_moto, write_shards)

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, storage options, local copy of the shards) with buckets corpus + models."""
    import s3fs

    root = tmp_path_factory.mktemp("s3")
    procs = Processes(root / "logs")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        try:
            endpoint = start_moto(procs)
            create_bucket(endpoint, "corpus")
            create_bucket(endpoint, "models")
            options = {"endpoint_url": endpoint}
            fs = s3fs.S3FileSystem(**options)
            shards = write_shards(root / "shards", n=3, per_shard=40)
            for path in shards:
                fs.put(str(path), f"corpus/shards/{path.name}")
            fs.pipe("corpus/heldout.txt", shards[0].read_bytes()[:20_000])
            yield endpoint, options, root / "shards"
        finally:
            procs.close()


@pytest.mark.slow
def test_s3_round_trip(s3, tokenizer_file, tmp_path):
    endpoint, options, local_shards = s3
    so = json.dumps(options)
    env = child_env(**CREDENTIALS)
    store = "s3://models/round-trip.zarr"
    solved = json_out(run_cli(["solve", "s3://corpus/shards/", "--store", store,
                                 "--tokenizer", tokenizer_file, "--radius", "2",
                                 "--storage-options", so, "--json"], env=env))
    assert solved["shards"] == 3 and solved["new_tokens"] > 0

    info = json_out(run_cli(["info", store, "--storage-options", so, "--json"], env=env))
    assert info["shard_list"] == [f"s3://corpus/shards/s{i:02d}.txt" for i in range(3)]
    assert info["tokens"] == solved["new_tokens"] and not info["weights"]["stale"]

    # fsspec's own environment configuration works as well as --storage-options
    env_configured = json_out(run_cli(["info", store, "--json"],
                                      env=child_env(**CREDENTIALS,
                                                    FSSPEC_S3_ENDPOINT_URL=endpoint)))
    assert env_configured["tokens"] == info["tokens"]

    evaluated = json_out(run_cli(["eval", store, "s3://corpus/heldout.txt",
                                    "--storage-options", so, "--json"], env=env))
    assert evaluated["tokens"] > 1000 and 1 < evaluated["perplexity"] < 400

    # the same counts as a local run over the same bytes
    local = tmp_path / "local.zarr"
    api.solve([str(p) for p in sorted(local_shards.iterdir())], str(local),
              tokenizer=tokenizer_file, radius=2)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        remote_counts = ModelStore(store, options).read_counts()
    assert remote_counts.equal_counts(ModelStore(local).read_counts())

    # dense export written to the object store too
    run_cli(["export", store, "s3://models/counts.npz", "--counts", "--storage-options", so],
            env=env)
    import s3fs

    with s3fs.S3FileSystem(key="testing", secret="testing", **options).open(
            "models/counts.npz", "rb") as handle:
        arrays = np.load(handle)
        assert int(arrays["unigram"].sum()) == solved["new_tokens"]


def test_store_in_a_missing_bucket_fails_before_counting(s3):
    endpoint, options, _ = s3
    env = child_env(**CREDENTIALS)
    proc = run_cli(["count", "s3://corpus/shards/", "--store", "s3://no-such-bucket/m.zarr",
                    "--vocab-size", "300", "--storage-options", json.dumps(options)],
                   env=env, check=False)
    assert proc.returncode == 2
    assert "s3://no-such-bucket/m.zarr" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "counting" not in proc.stderr  # refused before reading the corpus

    proc = run_cli(["info", "s3://no-such-bucket/m.zarr", "--storage-options",
                    json.dumps(options)], env=env, check=False)
    assert proc.returncode == 2 and "no-such-bucket" in proc.stderr


def test_corpus_in_a_missing_bucket(s3, tmp_path):
    _, options, _ = s3
    proc = run_cli(["count", "s3://no-corpus-bucket/shards/", "--store", str(tmp_path / "m.zarr"),
                    "--storage-options", json.dumps(options)],
                   env=child_env(**CREDENTIALS), check=False)
    assert proc.returncode == 2
    assert "s3://no-corpus-bucket/shards/" in proc.stderr and "Traceback" not in proc.stderr


def test_wrong_credentials_name_the_url(tmp_path):
    """A second moto server with authentication on: a wrong key is refused, with the URL."""
    import boto3

    procs = Processes(tmp_path / "logs")
    try:
        endpoint = start_moto(procs, "moto-auth")
        create_bucket(endpoint, "private")
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iam.create_user(UserName="alice")
        iam.put_user_policy(UserName="alice", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="alice")["AccessKey"]
        request = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0",
                                         method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=time_limit(10)).close()

        env = child_env(AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="",
                        AWS_SECRET_ACCESS_KEY="")
        wrong = {"endpoint_url": endpoint, "key": "AKIAWRONGWRONGWRONG0", "secret": "nope"}
        proc = run_cli(["count", "builtin://pydoc-topics", "--store", "s3://private/m.zarr",
                        "--storage-options", json.dumps(wrong)], env=env, check=False)
        assert proc.returncode == 2
        assert "s3://private/m.zarr" in proc.stderr
        assert "InvalidAccessKeyId" in proc.stderr or "Access" in proc.stderr
        assert "Traceback" not in proc.stderr

        right = {"endpoint_url": endpoint, "key": key["AccessKeyId"],
                 "secret": key["SecretAccessKey"]}
        proc = run_cli(["info", "s3://private/m.zarr", "--storage-options", json.dumps(right)],
                       env=env, check=False)
        assert proc.returncode == 2 and "no streamsolve store" in proc.stderr  # reached it
    finally:
        procs.close()


def test_s3_lock_is_a_conditional_create(s3, monkeypatch):
    """Eight writers starting in the same instant: the If-None-Match create lets exactly one
    in (a write-then-verify lets several read back their own token)."""
    import threading

    from streamsolve.store.locking import StoreLock, StoreLockedError

    endpoint, options, _ = s3
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    store = "s3://models/locked.zarr"
    barrier, holders, refused = threading.Barrier(8), [], []

    def race():
        lock = StoreLock(store, options, command="race")
        barrier.wait()
        try:
            holders.append(lock.acquire())
        except StoreLockedError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(holders) == 1 and len(refused) == 7, (holders, refused)
    with pytest.raises(StoreLockedError, match=r"\(race\)"):
        StoreLock("s3://models/./locked.zarr/", options).acquire()
    holders[0].release()
    with StoreLock(store, options):
        pass
