"""Command-line habits: --version, help text on every argument (issue 16)."""

from __future__ import annotations

import argparse

import pytest

import streamsolve
from streamsolve.cli import build_parser, main


def _parsers(parser, name="streamsolve"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_argument_and_positional_has_help():
    missing = [f"{name}: {action.dest}" for name, parser in _parsers(build_parser())
               for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction) and not action.help]
    assert not missing, missing


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamsolve {streamsolve.__version__}"


def test_vocab_size_for_an_existing_store_warns(tmp_path, sharded_corpus, tokenizer_file, caplog):
    from streamsolve import api

    shards = sharded_corpus(2, "")
    store = str(tmp_path / "m.zarr")
    api.count([shards[0]], store, tokenizer=tokenizer_file, radius=1)
    caplog.clear()
    api.count([shards[1]], store, vocab_size=999)
    assert "--vocab-size 999 is ignored" in caplog.text
    caplog.clear()
    api.count([shards[1]], store)  # nothing given: no warning
    assert "--vocab-size" not in caplog.text


def test_no_calibrate_prints_no_calibrated_line(capsys, tmp_path, sharded_corpus, tokenizer_file):
    shards = sharded_corpus(2, "")
    code = main(["solve", *shards, "--store", str(tmp_path / "m.zarr"), "--tokenizer",
                 tokenizer_file, "--radius", "1", "--heldout", "0.3", "--no-calibrate", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "held-out perplexity" in out and "calibrated " not in out


def test_memory_and_its_s_alias_are_main_options_of_every_command():
    from streamsolve.cli import build_parser

    commands = {name: parser for name, parser in _parsers(build_parser())}
    with_memory = [name for name, parser in commands.items()
                   if any(a.dest == "memory" for a in parser._actions)]
    assert set(with_memory) >= {f"streamsolve {c}" for c in (
        "count", "finalize", "solve", "eval", "score", "export", "cluster-script")}
    for name in with_memory:
        parser = commands[name]
        [action] = [a for a in parser._actions if a.dest == "memory"]
        assert {"-S", "--memory"} <= set(action.option_strings), name
        assert action.help and action.help != argparse.SUPPRESS, name
        assert action in parser._optionals._group_actions, name  # "options", not batch jobs
        text = parser.format_help()
        batch = text.find("HPC batch jobs")
        assert "-S SIZE, --memory SIZE" in text, name
        assert batch == -1 or text.index("-S SIZE, --memory SIZE") < batch, name
