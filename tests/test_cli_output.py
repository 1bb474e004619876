"""Human output of ``count``, ``finalize`` and ``info``: aligned tables; ``--json`` unchanged
(issue 16)."""

from __future__ import annotations

import json
import re

from streamsolve.cli import main
from streamsolve.cli_output import format_table, format_value


def _value_columns(table: str) -> set[int]:
    """Column where the value starts on each line of a two-column table."""
    return {re.search(r"\S  +(?=\S)", line).end() for line in table.splitlines()}


def test_format_value_and_table():
    assert format_value([1597, 2292]) == "1,597 / 2,292"
    assert format_value([[0.5, 1.0], [2.0, 3.0]]) == "0.5 / 1; 2 / 3"
    assert format_value({"bytes": 13936, "lines": 7}) == "bytes 13,936, lines 7"
    assert format_value(None) == "-" and format_value([]) == "-" and format_value(True) == "yes"
    assert format_table([("a", "1"), ("longer", "2")]) == "a       1\nlonger  2"


def test_count_finalize_info_print_aligned_tables(capsys, tmp_path, sharded_corpus,
                                                  tokenizer_file):
    shards = sharded_corpus(1, "")
    store = str(tmp_path / "m.zarr")
    runs = {}
    for command in (["count", *shards, "--store", store, "--tokenizer", tokenizer_file,
                     "--radius", "2"], ["finalize", store, "--smoothing", "additive"],
                    ["info", store]):
        assert main([*command, "-q"]) == 0
        runs[command[0]] = capsys.readouterr().out
    for name, out in runs.items():
        table = out.split("\nhistory:")[0]  # info ends with its history
        assert len(_value_columns(table)) == 1, (name, out)
        assert ": " not in table.splitlines()[0], out  # no "key: value" lines
    assert "distinct pairs (per offset)" in runs["count"]
    assert "distinct pairs (per offset)" in runs["info"]
    assert "per block" not in runs["count"] + runs["info"]
    assert re.search(r"^smoothing +additive$", runs["finalize"], re.M), runs["finalize"]
    # --json is the API's dict, unchanged
    assert main(["info", store, "--json", "-q"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["radius"] == 2 and len(info["nnz"]) == 2 and "history" in info


def test_solve_summary_is_aligned_and_per_offset(capsys, tmp_path, sharded_corpus,
                                                 tokenizer_file):
    shards = sharded_corpus(2, "")
    code = main(["solve", *shards, "--store", str(tmp_path / "m.zarr"), "--tokenizer",
                 tokenizer_file, "--radius", "2", "--heldout", "0.3", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("streamsolve solve — summary\n")
    table = out.split("\n", 1)[1]
    assert len(_value_columns(table)) == 1, out
    assert "distinct pairs (per offset)" in out and "per block" not in out
