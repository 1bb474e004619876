"""The peak memory the stage banners report is the process tree's real peak: a spike between
two samples, in this process or in a child, is not missed (issue 16); and measuring leaves the
kernel's high-water mark alone, so external tools see the same peak (issue 22)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from streamsolve.engine.progress import PeakMemory, peak_rss

from ..conftest import time_limit
from ..deploy_helpers import child_env

pytestmark = pytest.mark.skipif(not peak_rss(), reason="needs Linux /proc/PID/status (VmHWM)")

SPIKE = 200 << 20


def test_a_spike_between_two_samples_is_counted():
    """In a fresh process (whose high-water mark is its own): the spike sets a new mark,
    which the monitor reads at its exit although no sample saw it."""
    code = ("import numpy; from streamsolve.engine.progress import PeakMemory\n"
            "with PeakMemory(interval=60.0) as mem:\n"
            "    before = mem.peak; spike = numpy.ones(%d); del spike\n"
            "print(before, mem.sampled_peak, mem.peak)" % (SPIKE // 8))
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                          text=True, timeout=time_limit(120))
    assert done.returncode == 0, done.stderr[-2000:]
    before, sampled, peak = map(int, done.stdout.split())
    assert sampled < before + SPIKE // 2  # the samples alone miss it
    assert peak >= before + SPIKE * 0.95


def test_measuring_leaves_the_kernels_high_water_mark_alone():
    spike = np.ones(SPIKE // 8)
    del spike
    mark = peak_rss()
    with PeakMemory(interval=0.01) as outer:
        with PeakMemory(interval=0.01):
            time.sleep(0.1)
    assert peak_rss() >= mark  # never reset (the old monitors wrote /proc/PID/clear_refs)


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
    code = ("import numpy; from streamsolve.engine.progress import PeakMemory\n"
            "with PeakMemory(interval=60.0) as outer:\n"
            "    before = outer.peak; spike = numpy.ones(%d); del spike\n"
            "    with PeakMemory(interval=60.0) as inner:\n"
            "        pass\n"
            "print(before, inner.peak, outer.peak)" % (SPIKE // 8))
    done = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                          text=True, timeout=time_limit(120))
    assert done.returncode == 0, done.stderr[-2000:]
    before, inner, outer = map(int, done.stdout.split())
    assert inner < before + SPIKE // 2
    assert outer >= before + SPIKE * 0.95


def test_count_json_peak_agrees_with_the_kernels_high_water_mark(tmp_path, kjv_path,
                                                                   tokenizer_file):
    """``count --json``'s measured peak is what ``/usr/bin/time -v`` and every getrusage-based
    tool report for the same process (issue 22): measuring must not reset the kernel's
    high-water mark (the old code wrote ``/proc/PID/clear_refs`` at each stage, so the
    kernel's figure was the peak since the last stage began: about half the real one)."""
    out_path, err_path = tmp_path / "out.json", tmp_path / "err.txt"
    usage_path = tmp_path / "usage.json"
    # The count is started by a small launcher, not by pytest: Linux carries a process's
    # high-water mark across fork + exec, so a child forked from a large pytest would report
    # pytest's RSS. The launcher reads getrusage of its one child (and that child's reaped
    # children) with wait4, as /usr/bin/time -v does.
    launcher = ("import json, os, subprocess, sys\n"
                "p = subprocess.Popen(sys.argv[2:])\n"
                "_, status, usage = os.wait4(p.pid, 0)\n"
                "json.dump({'code': os.waitstatus_to_exitcode(status), 'maxrss': usage.ru_maxrss},"
                " open(sys.argv[1], 'w'))\n")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        subprocess.run(
            [sys.executable, "-c", launcher, str(usage_path), sys.executable, "-m", "streamsolve",
             "count", str(kjv_path), "--store", str(tmp_path / "m.zarr"), "--tokenizer",
             tokenizer_file, "--radius", "3", "--workers", "2", "--memory", "1GB", "--json"],
            env=child_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL, check=False)
    usage = json.loads(usage_path.read_text())
    assert usage["code"] == 0, err_path.read_text()[-3000:]
    maxrss = usage["maxrss"] * 1024
    measured = json.loads(out_path.read_text().strip().splitlines()[-1])["memory"][
        "peak_measured_bytes"]
    # start-up alone (imports, a refused command) holds about 100 MiB; this count ~185 MiB
    assert measured > 150 << 20, "the count should dominate the start-up's memory"
    assert abs(measured - maxrss) <= 0.1 * maxrss, (
        f"JSON peak {measured / 2**20:.0f} MiB, kernel's high-water mark "
        f"{maxrss / 2**20:.0f} MiB")
