"""What a user sees and what stays behind around scheduler processes: every kind of
``--scheduler`` value is one line (exit 2, no ``Client.__del__`` traceback), and the
``processes`` scheduler's workers and resource tracker die with a SIGKILLed parent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ..deploy_helpers import child_env, run_cli, wait_for, write_shards


@pytest.mark.parametrize("address, message", [
    ("ucx://127.0.0.1:1", "ucx://127.0.0.1:1"),
    ("inproc://x", "inproc://"),
    ("ws://127.0.0.1:1", "cannot reach the Dask scheduler at ws://127.0.0.1:1"),
    ("wss://127.0.0.1:1", "wss://127.0.0.1:1"),
    ("tls://127.0.0.1:1", "tls://127.0.0.1:1"),
    ("tcp://127.0.0.1:1", "cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
    ("127.0.0.1:8786", "tcp://127.0.0.1:8786"),  # names the fix: the scheme
    ("junk", "unknown scheduler 'junk'"),
    ("foo://bar:1", "unknown address scheme 'foo'"),
    ("tcp://host:99999", "port in 1..65535"),
    ("ws://", "not a Dask scheduler address"),
])
@pytest.mark.parametrize("command", [["count", "corpus", "--store", "x.zarr"],
                                     ["finalize", "x.zarr"]])
def test_every_scheduler_address_is_one_line(command, address, message, tmp_path):
    env = {k: v for k, v in child_env().items() if not k.startswith("DASK_DISTRIBUTED__COMM")}
    proc = run_cli([*command, "--scheduler", address, "--connect-timeout", "2"], env=env,
                   cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]  # no "Exception ignored in Client.__del__"
    assert lines[0].startswith(f"streamsolve {command[0]}: error: ") and message in lines[0]


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_processes_scheduler_leaves_nothing_alive_after_sigkill(tmp_path, tokenizer_file):
    """SIGKILL to `count --scheduler processes`: its worker processes and multiprocessing's
    resource tracker go too (nothing left in the process table)."""
    psutil = pytest.importorskip("psutil")
    for path in write_shards(tmp_path / "corpus", n=4):
        path.write_text(path.read_text() * 40)  # tens of seconds of counting
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamsolve", "count", "corpus", "--store", "m.zarr",
         "--tokenizer", tokenizer_file, "--scheduler", "processes", "--workers", "2"],
        cwd=tmp_path, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    children = []
    try:
        def workers_started():  # a worker of the pool, and the resource tracker
            children[:] = _descendants(proc.pid)
            lines = " ".join(" ".join(c.cmdline()) for c in children)
            return "spawn_main" in lines and "resource_tracker" in lines

        wait_for(workers_started, 120, "the processes scheduler's workers")
        time.sleep(1.0)  # let every worker import and start on a shard
        children[:] = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

        def all_gone():
            return not [c for c in children if c.is_running()
                        and c.status() != psutil.STATUS_ZOMBIE]

        wait_for(all_gone, 15, "the workers and resource tracker to die with their parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for child in children:  # never leave them behind, even when the test fails
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


def test_tls_settings_naming_missing_files_are_one_line(tmp_path):
    env = child_env(DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(tmp_path / "missing-ca.pem"),
                    DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(tmp_path / "missing.pem"),
                    DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(tmp_path / "missing.key"))
    proc = run_cli(["count", "corpus", "--store", "x.zarr", "--scheduler", "tls://127.0.0.1:1",
                    "--connect-timeout", "2"], env=env, cwd=tmp_path, check=False, timeout=60)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "cannot use the TLS settings" in line and "tls://127.0.0.1:1" in line
