"""The C kernels: the same distinct keys, counts and merges as NumPy, for every key width."""

from __future__ import annotations

import os

import numpy as np
import pytest

from streamsolve.core import native
from streamsolve.core.counting import ContextCarry, CountConfig, count_flat


def numpy_only(monkeypatch):
    monkeypatch.setattr(native, "_kernel", lambda: None)
    monkeypatch.setattr(native, "_merge_kernel", lambda: None)


@pytest.mark.skipif(os.environ.get(native.NATIVE_ENV) == "0",
                    reason="kernel disabled by STREAMSOLVE_NATIVE=0")
def test_kernel_is_built_by_the_install():
    assert native.available(), "pip install did not build streamsolve/_radix.c"


@pytest.mark.parametrize("key_bound", [1, 2, 3, 2**11, 2**11 + 1, 2**22 + 5, 2**26, 2**32])
@pytest.mark.parametrize("size", [0, 1, 2, 7, 50_000])
def test_kernel_counts_equal_numpy_unique(key_bound, size):
    rng = np.random.default_rng(size + key_bound % 1000)
    uniform = rng.integers(0, key_bound, size=size, dtype=np.uint64).astype(np.uint32)
    zipf = np.minimum(rng.zipf(1.3, size=size) - 1, key_bound - 1).astype(np.uint32)
    extremes = np.resize(np.array([key_bound - 1, 0], dtype=np.uint32), size)
    for keys in (uniform, zipf, extremes, np.sort(uniform)[::-1].copy()):
        before = keys.copy()
        got_keys, got_counts = native.count_keys_u32(keys, key_bound)
        want_keys, want_counts = np.unique(keys, return_counts=True)
        np.testing.assert_array_equal(keys, before)  # not overwritten unless asked
        assert got_keys.dtype == np.int64 and got_counts.dtype == np.int64
        np.testing.assert_array_equal(got_keys, want_keys)
        np.testing.assert_array_equal(got_counts, want_counts)


def test_kernel_may_sort_in_the_callers_buffer():
    keys = np.array([5, 3, 5, 9, 3, 5], dtype=np.uint32)
    got_keys, got_counts = native.count_keys_u32(keys, 16, overwrite=True)
    assert got_keys.tolist() == [3, 5, 9] and got_counts.tolist() == [2, 3, 1]


def test_key_bound_outside_uint32_is_refused():
    with pytest.raises(ValueError, match="key_bound"):
        native.count_keys_u32(np.zeros(3, np.uint32), 2**32 + 1)
    with pytest.raises(ValueError, match="key_bound"):
        native.count_keys_u32(np.zeros(3, np.uint32), 0)


@pytest.mark.parametrize("aggregation", ["cat", "sum"])
def test_counts_identical_with_and_without_the_kernel(monkeypatch, aggregation):
    rng = np.random.default_rng(7)
    V = 3000
    flat = np.minimum(rng.zipf(1.2, size=40_000) - 1, V - 1).astype(np.int64)
    lengths = np.array([10_000, 1, 0, 19_999, 10_000])
    config = CountConfig(V, radius=4, aggregation=aggregation, bos_id=2)
    with_kernel = count_flat(flat, lengths, False, config, ContextCarry(config))
    numpy_only(monkeypatch)
    without = count_flat(flat, lengths, False, config, ContextCarry(config))
    assert with_kernel.equal_counts(without)
    assert sum(with_kernel.nnz) > 1000


def random_runs(rng, n_runs, bound):
    keys, values = [], []
    for _ in range(n_runs):
        k = np.unique(rng.integers(0, bound, size=rng.integers(0, 4000)))
        keys.append(k)
        values.append(rng.integers(1, 1000, size=k.size))
    return keys, values


@pytest.mark.parametrize("n_runs", [1, 2, 3, 8, 13])
def test_merge_runs_adds_equal_keys_like_a_brute_force_sum(n_runs):
    rng = np.random.default_rng(n_runs)
    keys, values = random_runs(rng, n_runs, 5000)
    keys.append(np.zeros(0, np.int64))  # empty runs are skipped
    values.append(np.zeros(0, np.int64))
    got_keys, got_values = native.merge_runs(keys, values)
    expected = np.zeros(5000, np.int64)
    for k, v in zip(keys, values):
        np.add.at(expected, k, v)
    np.testing.assert_array_equal(got_keys, np.flatnonzero(expected))
    np.testing.assert_array_equal(got_values, expected[expected > 0])
    assert got_keys.dtype == np.int64 and got_values.dtype == np.int64


def test_merge_runs_identical_with_and_without_the_kernel(monkeypatch):
    rng = np.random.default_rng(3)
    keys, values = random_runs(rng, 9, 2**40)
    keys[4] = keys[2].copy()  # full overlap between two runs
    values[4] = values[2][::-1].copy()
    with_kernel = native.merge_runs(keys, values)
    monkeypatch.setattr(native, "_merge_kernel", lambda: None)
    without = native.merge_runs(keys, values)
    for a, b in zip(with_kernel, without):
        np.testing.assert_array_equal(a, b)
    assert native.merge_runs([], [])[0].size == 0
