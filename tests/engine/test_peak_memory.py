"""The peak memory the stage banners report is the process tree's real peak: a spike between
two samples, in this process or in a child, is not missed (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from streamsolve.engine.progress import PeakMemory, reset_peak_rss

from ..conftest import time_limit
from ..deploy_helpers import child_env

pytestmark = pytest.mark.skipif(not reset_peak_rss(), reason="needs Linux /proc/PID/clear_refs")

SPIKE = 200 << 20


def test_a_spike_between_two_samples_is_counted():
    with PeakMemory(interval=60.0) as mem:  # one sample at entry and one at exit only
        before = mem.peak
        spike = np.ones(SPIKE // 8)
        del spike
    assert mem.sampled_peak < before + SPIKE // 2  # the samples alone miss it
    assert mem.peak >= before + SPIKE * 0.95


def test_a_childs_spike_is_counted_after_it_freed_the_memory():
    """The child allocates, frees, then lives on (until its stdin closes) while the monitor's
    samples see its high-water mark."""
    code = ("import numpy, sys; a = numpy.ones(%d); del a; "
            "sys.stdout.write('x'); sys.stdout.flush(); sys.stdin.read()" % (SPIKE // 8))
    with PeakMemory(interval=0.05) as mem:
        before = mem.peak
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        try:
            assert child.stdout.read(1) == b"x"  # allocated and freed
            end = time.monotonic() + time_limit(30)
            while mem.peak < before + SPIKE * 0.95 and time.monotonic() < end:
                time.sleep(0.05)  # the sampler thread's next samples
        finally:
            child.stdin.close()
            child.wait()
    assert mem.peak >= before + SPIKE * 0.95


def test_a_nested_monitor_does_not_hide_the_outer_peak():
    with PeakMemory(interval=60.0) as outer:
        before = outer.peak
        spike = np.ones(SPIKE // 8)
        del spike
        with PeakMemory(interval=60.0) as inner:  # resets the high-water mark
            pass
    assert inner.peak < before + SPIKE // 2
    assert outer.peak >= before + SPIKE * 0.95


def test_count_json_peak_agrees_with_the_kernels_high_water_mark(tmp_path, kjv_path,
                                                                   tokenizer_file):
    """``count --json``'s measured peak is what ``/usr/bin/time -v`` and every getrusage-based
    tool report for the same process (issue 22): measuring must not reset the kernel's
    high-water mark (the old code wrote ``/proc/PID/clear_refs`` at each stage, so the
    kernel's figure was the peak since the last stage began: about half the real one)."""
    out_path, err_path = tmp_path / "out.json", tmp_path / "err.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "streamsolve", "count", str(kjv_path), "--store",
             str(tmp_path / "m.zarr"), "--tokenizer", tokenizer_file, "--radius", "3",
             "--workers", "2", "--memory", "1GB", "--json"],
            env=child_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        # getrusage(RUSAGE_CHILDREN) of this one child (and its reaped children), as
        # /usr/bin/time -v reads it
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, err_path.read_text()[-3000:]
    maxrss = usage.ru_maxrss * 1024
    measured = json.loads(out_path.read_text().strip().splitlines()[-1])["memory"][
        "peak_measured_bytes"]
    assert measured > 200 << 20, "the count should dominate the start-up's memory"
    assert abs(measured - maxrss) <= 0.1 * maxrss, (
        f"JSON peak {measured / 2**20:.0f} MiB, kernel's high-water mark "
        f"{maxrss / 2**20:.0f} MiB")
