"""Issue 21 item 7: a ``--memory`` above what the machine holds (this host's RAM; on a Dask
cluster the workers' memory limits together) or below the memory one process needs before it
counts anything is a one-line error for every command, unless ``--force-memory``."""

from __future__ import annotations

import pytest

import streamsolve as ss
from streamsolve.cli import main
from streamsolve.engine.memory import PROCESS_BASE_BYTES, check_memory, format_bytes, total_ram

HUGE = f"{(total_ram() * 4) // 10**12 + 1}TB"  # always more than this host's RAM


@pytest.fixture(scope="module")
def store(tmp_path_factory, documents, tokenizer_file) -> str:
    from ..conftest import write_text

    root = tmp_path_factory.mktemp("memory")
    corpus = write_text(root / "corpus.txt", "\n\n".join(documents[:12]) + "\n")
    path = str(root / "m.zarr")
    ss.solve([str(corpus)], path, tokenizer=tokenizer_file, radius=1, heldout_fraction=0.2)
    return path


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main([*map(str, args), "-q"])
    return code, capsys.readouterr().err


def commands(store: str, tmp_path, corpus: str) -> dict[str, list[str]]:
    return {"count": ["count", corpus, "--store", tmp_path / "new.zarr"],
            "solve": ["solve", corpus, "--store", tmp_path / "solved.zarr"],
            "finalize": ["finalize", store, "--calibrate", corpus],
            "eval": ["eval", store, corpus],
            "score": ["score", store, corpus],
            "export": ["export", store, tmp_path / "c.npz", "--counts"],
            "cluster-script": ["cluster-script", "--cluster", "slurm"]}


@pytest.mark.parametrize("command", ["count", "solve", "finalize", "eval", "score", "export",
                                     "cluster-script"])
@pytest.mark.parametrize("memory", ["tiny", "huge"])
def test_a_nonsense_budget_is_one_line_for_every_command(capsys, tmp_path, store, sharded_corpus,
                                                         command, memory):
    if command == "cluster-script" and memory == "huge":
        pytest.skip("a batch job's memory is another host's: only the floor is checked")
    corpus = sharded_corpus(1, "")[0]
    value = "1MB" if memory == "tiny" else HUGE
    code, err = run_cli(capsys, *commands(store, tmp_path, corpus)[command], "--memory", value)
    assert code == 2 and err.count("\n") == 1, err
    assert f"--memory {value}" in err and "--force-memory" in err
    assert ("256MiB" in err) if memory == "tiny" else ("this host's RAM" in err)
    assert not (tmp_path / "new.zarr").exists() and not (tmp_path / "solved.zarr").exists()
    assert not (tmp_path / "c.npz").exists()


def test_force_memory_runs_with_a_tiny_budget(capsys, tmp_path, sharded_corpus, tokenizer_file):
    code, err = run_cli(capsys, "count", *sharded_corpus(2, ""), "--store", tmp_path / "m.zarr",
                        "--tokenizer", tokenizer_file, "--memory", "1MB", "--force-memory",
                        "--tmp", tmp_path / "spill")
    assert code == 0, err
    assert ss.info(str(tmp_path / "m.zarr"))["tokens"] > 0


def test_the_python_api_refuses_the_same_unless_forced(tmp_path, sharded_corpus,
                                                       tokenizer_file):
    paths = sharded_corpus(2, "")
    with pytest.raises(ValueError, match="below the 268.44 MB"):
        ss.count(paths, str(tmp_path / "a.zarr"), tokenizer=tokenizer_file, memory="1MB")
    with pytest.raises(ValueError, match="this host's RAM"):
        ss.count(paths, str(tmp_path / "a.zarr"), tokenizer=tokenizer_file, memory=HUGE)
    assert not (tmp_path / "a.zarr").exists()
    ss.count(paths, str(tmp_path / "a.zarr"), tokenizer=tokenizer_file, memory="1MB",
             force_memory=True, tmp=str(tmp_path / "spill"))


def test_the_bounds():
    check_memory("256MiB")  # the floor itself, and a share of the RAM, are fine
    check_memory("80%")
    with pytest.raises(ValueError, match=format_bytes(PROCESS_BASE_BYTES)):
        check_memory(PROCESS_BASE_BYTES - 1)
    check_memory("1MB", force=True)
    with pytest.raises(ValueError, match="cannot read"):
        check_memory("lots", force=True)  # forced, but it must still parse
    # on a cluster: the workers' limits together, not this host's RAM
    limits = [10**9, 2 * 10**9]
    check_memory("2GB", worker_limits=limits)
    with pytest.raises(ValueError, match=r"the 2 Dask workers' memory limits \(2 x 1.00 GB"):
        check_memory("2.5GB", worker_limits=limits)
    check_memory(HUGE, remote=True)  # a batch job on other hosts: only the floor
    with pytest.raises(ValueError, match="256MiB"):
        check_memory("1MB", remote=True)


@pytest.fixture(scope="module")
def cluster_address():
    pytest.importorskip("distributed")
    import dask
    from distributed import LocalCluster

    no_memory_actions = {f"distributed.worker.memory.{key}": False
                         for key in ("target", "spill", "pause", "terminate")}
    with dask.config.set(no_memory_actions), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, memory_limit="300MB",
            dashboard_address=":0", scheduler_port=0, silence_logs=40) as cluster:
        yield cluster.scheduler_address


def test_on_a_cluster_the_ceiling_is_the_workers_limits(tmp_path, sharded_corpus,
                                                        tokenizer_file, cluster_address):
    paths = sharded_corpus(2, "")
    with pytest.raises(ValueError, match=r"--memory 1GB .*2 x 300.00 MB.*--force-memory"):
        ss.count(paths, str(tmp_path / "m.zarr"), tokenizer=tokenizer_file, memory="1GB",
                 scheduler=cluster_address)
    assert not (tmp_path / "m.zarr").exists()
    done = ss.count(paths, str(tmp_path / "m.zarr"), tokenizer=tokenizer_file, memory="1GB",
                    scheduler=cluster_address, force_memory=True)
    assert done.memory["budget_bytes"] == 10**9
