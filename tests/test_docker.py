"""The container recipe without a container engine: the image's install script runs in a
fresh venv, its pins come from pyproject.toml, and every command in docker/compose.yaml is a
real `streamsolve` / `dask` command line (checked with their own parsers)."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib

import pytest

from streamsolve.cli import build_parser

from .conftest import time_limit
from .deploy_helpers import REPO, tool

DOCKER = REPO / "docker"


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin in constraints.txt: {line!r}"
            pins[_normalize(name)] = version.strip()
    return pins


def _image_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [*project["dependencies"], *extras["s3"], *extras["cluster"]]


def test_constraints_pin_every_dependency_within_pyproject():
    from packaging.requirements import Requirement

    pins = _constraints()
    for text in _image_requirements():
        req = Requirement(text)
        name = _normalize(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in docker/constraints.txt " \
                             "(run docker/lock.sh)"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"docker/constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}"


def test_dockerfile_is_a_thin_wrapper_over_install_sh():
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base  # pinned Python 3.11
    assert re.search(r"^RUN \./docker/install\.sh ", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.M)
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        stage = re.match(r"--from=(\S+)\s", line)
        if stage:  # from an earlier build stage, not from the repository
            assert stage.group(1) in stages, f"COPY from an unknown stage: {line}"
            continue
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies a missing path: {source}"


@functools.cache
def _dask_help(subcommand: str) -> str:
    proc = subprocess.run([tool("dask"), subcommand, "--help"], capture_output=True, text=True,
                          timeout=time_limit(120))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _interpolate(text: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / ${VAR} with a placeholder value."""
    return re.sub(r"\$\{(\w+)(?::?[-?][^}]*)?\}", lambda m: f"/placeholder/{m.group(1)}", text)


def _services() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(_interpolate((DOCKER / "compose.yaml").read_text()))["services"]


def test_compose_commands_are_real_command_lines():
    services = _services()
    commands = {name: s["command"] for name, s in services.items() if "command" in s}
    for name, command in commands.items():
        assert isinstance(command, list), f"{name}: use the exec (list) form"

    # dask scheduler / dask worker: every option exists in that dask's own --help
    dask = {name: c for name, c in commands.items() if c[0] == "dask"}
    assert sorted(c[1] for c in dask.values()) == ["scheduler", "worker", "worker"]
    for name, command in dask.items():
        help_text = _dask_help(command[1])
        for token in command[2:]:
            if token.startswith("--"):
                assert re.search(rf"(^|[\s,]){re.escape(token)}([\s,=]|$)", help_text, re.M), \
                    f"{name}: `dask {command[1]}` has no option {token}"
    scheduler = next(c for c in dask.values() if c[1] == "scheduler")
    port = scheduler[scheduler.index("--port") + 1]
    address = f"tcp://scheduler:{port}"
    for command in dask.values():
        if command[1] == "worker":
            assert command[2] == address

    # streamsolve: parsed by streamsolve's own parser
    solve = commands["solve"]
    assert solve[0] == "streamsolve"
    parser = build_parser()
    try:
        args = parser.parse_args(solve[1:])
    except SystemExit as exc:  # argparse error
        pytest.fail(f"compose `solve` is not a valid streamsolve command line: {exc}")
    assert args.command == "solve" and args.scheduler == address
    options = json.loads(args.storage_options)
    assert options["endpoint_url"] == "http://s3:5000"
    bucket = args.store.split("://", 1)[1].split("/", 1)[0]

    # the bucket the store needs is created (PUT /BUCKET on the object store, as the tests'
    # create_bucket helper does against moto) before the job starts
    curl = commands["create-bucket"]
    assert curl[curl.index("-X") + 1] == "PUT" and curl[-1] == f"http://s3:5000/{bucket}"
    assert services["solve"]["depends_on"]["create-bucket"]["condition"] == \
        "service_completed_successfully"

    # workers read the shards: the corpus is mounted where the job names it
    corpus_dir = args.corpus[0]
    for name, service in services.items():
        if service.get("command", [None, None])[:2] == ["dask", "worker"]:
            mounts = [v.split(":")[1] for v in service.get("volumes", [])]
            assert corpus_dir in mounts, f"{name} does not mount {corpus_dir}"
            assert service["environment"]["AWS_ACCESS_KEY_ID"]
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_slurm_example_is_valid_bash_running_make_solve():
    script = REPO / "pipelines" / "slurm" / "solve.sbatch"
    text = script.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH" in text
    assert re.search(r"^\s*make solve CORPUS=", text, re.M)
    subprocess.run(["bash", "-n", str(script)], check=True)
    # the ARGS it passes are a valid streamsolve solve command line
    match = re.search(r'^\s*make solve .*ARGS="([^"]*)"', text, re.M)
    if match:
        args = shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", match.group(1)))
        build_parser().parse_args(["solve", "--store", "x.zarr", *args])


@pytest.mark.slow
def test_install_sh_in_a_fresh_venv(tmp_path):
    """What the Dockerfile does, minus the container: copy what it copies, run install.sh."""
    src = tmp_path / "src"
    text = (DOCKER / "Dockerfile").read_text()
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):  # WORKDIR /src
        if line.startswith("--from="):
            continue  # the built venv, copied between stages
        *sources, dest = line.split()
        for source in sources:
            target = src / dest / (source.rsplit("/", 1)[-1] if dest.endswith("/") else "")
            if (REPO / source).is_dir():  # minus what Dockerfile.dockerignore leaves out
                shutil.copytree(REPO / source, target,
                                ignore=shutil.ignore_patterns("__pycache__", "*.so"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, target)
    venv = tmp_path / "venv"
    proc = subprocess.run(["bash", str(src / "docker" / "install.sh"), str(venv), str(src)],
                          capture_output=True, text=True, timeout=time_limit(600),
                          env={**_clean_env(), "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    frozen = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"],
                            capture_output=True, text=True, check=True).stdout
    installed = {_normalize(n): v for n, _, v in
                 (line.partition("==") for line in frozen.splitlines() if "==" in line)}
    pins = _constraints()
    for name, version in pins.items():
        assert installed.get(name) == version, f"{name}: installed {installed.get(name)}, " \
                                               f"pinned {version}"
    assert re.search(r"^streamsolve( @ |==)", frozen, re.M), frozen

    # the installed command works on its own (outside this checkout)
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=time_limit(300),
                            cwd=tmp_path, env=_clean_env())
    count = run([str(venv / "bin" / "streamsolve"), "count", "builtin://pydoc-topics",
                 "--store", str(tmp_path / "m.zarr"), "--vocab-size", "300", "-q", "--json"])
    assert count.returncode == 0, count.stderr
    assert json.loads(count.stdout.splitlines()[-1])["tokens"] > 100_000
    script = run([str(venv / "bin" / "streamsolve"), "cluster-script", "--cluster", "slurm",
                  "--tls-dir", str(tmp_path / "tls")])  # a temporary certificate: cryptography
    assert script.returncode == 0 and "#SBATCH" in script.stdout, script.stderr
    assert "--tls-cert" in script.stdout
    s3 = run([str(venv / "bin" / "python"), "-c", "import s3fs, dask_jobqueue"])
    assert s3.returncode == 0, s3.stderr


def _clean_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
