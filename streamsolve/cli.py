"""Command line: ``streamsolve count|finalize|eval|score|info|verify|export|generate|solve``.

Every command takes ``--json`` to print exactly one JSON object on stdout; logs and progress
go to stderr. Errors print one line naming the problem and exit with status 2.

Loading this module imports nothing but ``os`` and ``sys`` (loaded with the interpreter):
everything else, the standard library's ``argparse`` and ``logging`` included, is imported
inside `main` once Ctrl-C and SIGTERM are handled (`streamsolve.cli_process`), so an
interrupt at any moment of start-up is one line and exit 130, never a traceback.
"""

from __future__ import annotations

import os
import sys

#: The package's logger (``logging.getLogger(LOGGER)``).
LOGGER = "streamsolve"


def user_errors() -> tuple:
    """The exceptions that are the user's to fix: one line and exit 2, no traceback."""
    from .store.layout import StoreError
    from .store.locking import StoreLockedError
    from .text.reading import CorpusError
    from .text.tokenizer import TokenizerError

    return (CorpusError, StoreError, StoreLockedError, TokenizerError, ValueError,
            FileNotFoundError, PermissionError, RuntimeError, ImportError)


def _storage_options(text: str | None) -> dict | None:
    import json

    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--storage-options is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError("--storage-options must be a JSON object")
    return value


#: ``--smoothing-search`` -> api's ``smoothing_search``.
_SEARCH = {"auto": "auto", "on": True, "off": False}


def build_parser():
    """The ``streamsolve`` argument parser (`streamsolve.cli_parser.build_parser`)."""
    from .cli_parser import build_parser as build

    return build()


def _setup_logging(args):
    import logging

    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if args.verbose < 2:
        for noisy in ("distributed", "asyncio", "fsspec", "botocore", "aiobotocore", "s3fs",
                      "numcodecs"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _count_kwargs(args, storage_options) -> dict:
    return dict(tokenizer=args.tokenizer, vocab_size=args.vocab_size, radius=args.radius,
                aggregation=args.aggregation, documents=args.documents,
                text_field=args.text_field, bos_token=args.bos_token,
                scheduler=args.scheduler, workers=args.workers,
                memory=args.memory, tmp=args.tmp,
                storage_options=storage_options, allow_changed=args.allow_changed,
                wait=args.wait, break_lock=args.break_lock, force_memory=args.force_memory,
                mode=args.mode, ngram=args.ngram)  # ngram: issue 24 hook


def run(args) -> dict:
    """Run a parsed command; returns its JSON-able result."""
    from . import api

    so = _storage_options(args.storage_options)
    if args.command == "count":
        return api.count(args.corpus, args.store, **_count_kwargs(args, so)).summary()
    if args.command == "finalize":
        model = api.finalize(args.store, form=args.form, smoothing=args.smoothing, mu=args.mu,
                             alpha=args.alpha, calibrate=args.calibrate, storage_options=so,
                             wait=args.wait, break_lock=args.break_lock, discount=args.discount,
                             smoothing_search=_SEARCH[args.smoothing_search], mode=args.mode)
        return {"store": args.store, **model.weights.params()}
    if args.command == "eval":
        result = api.evaluate(args.store, args.text, so, uncalibrated=args.uncalibrated,
                              memory=args.memory)
        return {"store": args.store, **result.to_dict()}
    if args.command == "score":
        from .cli_output import write_records

        return write_records(api.score(args.store, args.text, per_token=args.per_token,
                                       storage_options=so, uncalibrated=args.uncalibrated,
                                       memory=args.memory))  # the summary: printed last
    if args.command == "info":
        return api.info(args.store, so)
    if args.command == "verify":
        return api.verify(args.store, so)
    if args.command == "export":
        return _export(args, so)
    if args.command == "generate":
        from .language_model import LanguageModel

        if "\0" in args.prompt:  # counting treats NUL as binary: never text the model saw
            raise ValueError("the prompt contains a NUL character: give text")
        model = LanguageModel.open(args.store, so)
        pieces = model.iter_generate(args.prompt, args.tokens, args.temperature, args.seed,
                                     args.top_k, args.top_p)
        top_next = [{"token": t, "p": round(p, 5)}
                    for t, p in model.next_token_distribution(args.prompt, args.top)] \
            if args.prompt else None
        if args.json:
            return {"prompt": args.prompt, "top_next": top_next, "continuation": "".join(pieces)}
        from .cli_output import write_pieces

        write_pieces(pieces)
        return {"prompt": args.prompt, "top_next": top_next}
    if args.command == "refine":
        from .refine import refine_store

        if not args.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}")
        return refine_store(args.store, args.train, args.heldout, init=args.init,
                            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
                            steps=args.steps, epochs=args.epochs, batch=args.batch,
                            rank=args.rank, device=args.device, patience=args.patience,
                            eval_every=args.eval_every, max_seconds=args.max_seconds,
                            seed=args.seed, storage_options=so, wait=args.wait,
                            break_lock=args.break_lock, heldout_tokens=args.heldout_tokens,
                            updates="dense" if args.dense_updates else "auto", mode=args.mode)
    if args.command == "train":  # issue 25: streamsolve.network.command
        from .network import command as train_command

        return train_command.run(None, train_command.options_from_args(args, so)).to_json()
    if args.command == "solve":
        import logging

        from .store.layout import StoreError
        from .text.reading import BUILTIN_CORPUS

        corpus = args.corpus or [BUILTIN_CORPUS]
        if not args.corpus:
            logging.getLogger(LOGGER).info(
                "no CORPUS given: using the embedded default corpus, CPython's own pydoc "
                "topic texts (pydoc_data.topics, about 0.5 MB)")
        if not args.overwrite and api.ModelStore(args.store, so).exists():
            raise StoreError(f"a store already exists at {args.store}: pass --overwrite to "
                             "replace it, or `streamsolve count` to add shards to it")
        return api.solve(corpus, args.store, heldout_fraction=args.heldout,
                         calibrate=not args.no_calibrate, form=args.form,
                         smoothing=args.smoothing, mu=args.mu, alpha=args.alpha,
                         discount=args.discount, overwrite=args.overwrite,
                         smoothing_search=_SEARCH[args.smoothing_search],
                         **_count_kwargs(args, so))
    raise AssertionError(args.command)


def _export(args, so) -> dict:
    """``streamsolve export``: counts, weights and/or the tokenizer."""
    from . import api, export
    from .engine.memory import parse_memory

    if not (args.counts or args.weights or args.arpa or args.tokenizer_out):
        raise ValueError("nothing to export: pass --counts, --weights, --arpa or --tokenizer "
                         "OUT.json")
    if (args.counts or args.weights or args.arpa) and not args.out:
        what = "counts" if args.counts else "weights" if args.weights else "arpa"
        raise ValueError(f"--{what} needs an OUT path")
    outs = [out for out in (args.out, args.tokenizer_out) if out]
    if len(outs) == 2 and os.path.abspath(outs[0]) == os.path.abspath(outs[1]):
        raise ValueError(f"{outs[0]} is given twice: write the tokenizer to another file")
    for out in outs:  # every output checked before anything is written
        export.check_output(out, args.store, so, args.force)
    if not args.weights and (args.rank or args.dense or args.format):
        raise ValueError("--format, --rank and --dense apply to --weights only")
    if args.memory and not (args.counts or args.weights):
        raise ValueError("--memory applies to --counts and --weights only")
    result = {}
    if args.arpa:  # issue 24 hook
        from .export import export_arpa

        result = export_arpa(args.store, args.out, so, force=args.force)
    if args.counts:
        result = api.export_counts(args.store, args.out, so, args.memory, force=args.force)
    if args.weights:
        budget = parse_memory(args.memory) if args.memory else None
        result = export.export_weights(args.store, args.out, args.format, args.rank,
                                       args.dense, budget, so, force=args.force)
    if args.tokenizer_out:
        result.update(export.export_tokenizer(args.store, args.tokenizer_out, so,
                                              force=args.force))
    return result


def main(argv=None) -> int:
    """Entry point of the ``streamsolve`` command: its exit status (0, 2 for errors the
    user can fix, 130 after Ctrl-C, 143 after SIGTERM; 0 when stdout is closed early)."""
    try:
        from .cli_process import run_guarded

        return run_guarded(lambda command: _main(argv, command))
    except KeyboardInterrupt:  # before the guard was up
        print("streamsolve: interrupted", file=sys.stderr)
        return 130


def _main(argv, command) -> int:
    """Parse, run and print one command (inside `run_guarded`)."""
    # Tokenizers run in Dask threads (and spawned, not forked, processes): keep the
    # tokenizer's own thread pool, and say so explicitly to silence its fork warning.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import json
    import logging

    from .cli_output import print_human
    from .engine import cluster
    from .engine.memory import check_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    command.label = f"streamsolve {args.command}"
    _setup_logging(args)
    remote = args.command == "cluster-script" or cluster.wants_cluster(args)
    try:  # a job's --memory is checked against its workers' limits where it runs
        check_memory(getattr(args, "memory", None), getattr(args, "force_memory", False),
                     remote=remote)
        if remote:
            result = cluster.execute(args, run)  # the command runs as a job on the cluster
        else:
            result = cluster.run_checked(args, run)
    except user_errors() as exc:
        logging.getLogger(LOGGER).debug("error", exc_info=True)
        print(f"streamsolve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print_human(args.command, result)
    if args.command == "verify" and not result["ok"]:
        first, *rest = result["damaged"]
        more = f" (and {len(rest)} more: {', '.join(d['path'] for d in rest)})" if rest else ""
        print(f"streamsolve verify: error: {first['problem']}{more}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
