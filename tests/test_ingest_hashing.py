"""Stage 2 (hash) over many small shards (issue 26): one Dask task per batch of shards, not per
file (100,000 tiny files spent over 600 s building and culling 100,000 tasks)."""

from __future__ import annotations

import hashlib

from dask.callbacks import Callback

from streamsolve import ingest
from streamsolve.engine.runtime import Runtime
from streamsolve.text.shards import hash_batches, shard_sizes


class TaskCounter(Callback):
    def __init__(self):
        super().__init__()
        self.tasks = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.tasks += 1


def test_many_small_shards_are_hashed_in_a_few_tasks(tmp_path):
    paths = []
    for i in range(2000):
        path = tmp_path / f"d{i // 500}" / f"s{i:04d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"shard {i}\n" * (i % 7))
        paths.append(str(path))
    with Runtime("threads", 2) as runtime, TaskCounter() as counter:
        digests = ingest.shard_digests(paths, None, runtime)
    assert digests == [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    assert counter.tasks <= 20, f"{counter.tasks} tasks for {len(paths)} shards"


def test_hash_batches_bound_bytes_and_shards():
    sizes = [10, 10, 500, 10, 10, 10, 10, 10]
    assert hash_batches(sizes, 30) == [[0, 1], [2], [3, 4, 5], [6, 7]]
    assert hash_batches(sizes, 1000, max_shards=3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert hash_batches([], 30) == []
    assert sum(hash_batches([0] * 1500, 1), []) == list(range(1500))


def test_shard_sizes_read_nothing_and_know_what_they_cannot(tmp_path):
    a = tmp_path / "a.txt"
    a.write_bytes(b"x" * 123)
    sizes = shard_sizes([str(a), f"file://{a}", str(tmp_path / "gone.txt"),
                         "builtin://pydoc-topics"], unknown=-1)
    assert sizes == [123, 123, -1, -1]
