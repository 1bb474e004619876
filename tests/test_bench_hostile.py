"""`bench.hostile` runs its cases through the real CLI; three of them run here through the
same functions, so the script cannot rot (the whole list: ``python -m bench.hostile``)."""

from __future__ import annotations

import pytest

from bench import hostile


@pytest.mark.parametrize("name, expected", [
    ("memory-1MB", "refused in one line: streamsolve count: error: --memory 1MB"),
    ("scheduler-garbage", "refused in one line: streamsolve count: error: not a Dask scheduler"),
    ("copy-then-edit", "refused in one line: streamsolve count: error:"),  # + "counts intact"
])
def test_hostile_cases_run_and_hold(tmp_path, name, expected):
    case, command, code, outcome, seconds, cpu = hostile.run_case(name, tmp_path)
    assert case == name and "streamsolve" in command
    assert code == 2, outcome
    assert outcome.startswith(expected) and "UNEXPECTED" not in outcome, outcome
    assert seconds > 0 and cpu > 0


def test_every_case_has_a_function_and_rows_print(tmp_path, capsys):
    assert len(hostile.CASES) >= 20 and all(callable(case) for case in hostile.CASES.values())
    assert hostile.main(["--out", str(tmp_path), "--only", "memory-10TB"]) == 0
    table = (tmp_path / "hostile.md").read_text().splitlines()
    assert table[0].startswith("| case | command | exit | outcome |")
    assert table[2].startswith("| memory-10TB | `streamsolve count small.txt") and "| 2 |" in table[2]
    assert capsys.readouterr().out.strip().endswith(table[2])
