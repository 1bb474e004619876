"""The Python API behind the command line: count, finalize, evaluate, score, export, solve.

Each function does one stage and returns plain results (and writes the store), so a Python
user can run stages separately, add shards later, and re-finalize::

    import streamsolve as ss
    ss.count(["shard-0.txt.gz"], store="model.zarr", radius=3)
    ss.count(["shard-1.txt.gz"], store="model.zarr")          # adds to the store
    model = ss.finalize("model.zarr")
    model.perplexity(["Some held-out text."])
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from . import ingest
from .core.positions import sampled_positions
from .core.counting import CountConfig  # issue 24 hook
from .core.smoothing import check_smoothing, default_smoothing, smoothing_values  # noqa: F401
from .engine.finalize import commit_store_weights, compute_store_weights
from .engine.ngram_finalize import attach_ngram, ngram_info  # issue 24 hooks
from .engine.memory import check_memory
from .engine.runtime import is_address
from .ingest import DEFAULT_RADIUS, DEFAULT_VOCAB_SIZE, CountResult, IngestOptions  # noqa: F401
from .language_model import CALIBRATION_POSITIONS, Evaluation, LanguageModel
from .language_model import calibration_keep
from .store import replacement
from .store.layout import StoreError
from .store.location import check_writable, is_inside_store  # noqa: F401
from .store.locking import StoreLock
from .store.model_store import ModelStore
from .store.permissions import parse_mode, store_file_mode
from .text.holdout import HoldOut
from .text.reading import CorpusError, ReadStats
from .text.shards import expand_corpus
from .text.tokenizer import tokenizer_from_json

from .documents import (check_readable, heap_limit, iter_token_documents,  # noqa: F401
                        iter_token_pieces, read_documents, window_bytes)
from .export import dense_export_bytes, export_counts  # noqa: F401  (public here)

logger = logging.getLogger(__name__)


#: Writer locks this process holds, per thread: (thread id, store URL) -> the `StoreLock`.
_HELD_LOCKS: dict[tuple[int, str], StoreLock] = {}


@contextlib.contextmanager
def _writer_lock(store: str, storage_options: dict | None, *, wait: bool, break_lock: bool,
                 command: str, mode: int | str | None = None):
    """The store's `StoreLock`, re-entrant within a thread (so `solve` can hold it across
    overwrite + count + finalize while `count` and `finalize` still take it themselves),
    with the store's file ``mode`` applied meanwhile (`store_file_mode`). Yields the held
    `StoreLock`."""
    key = (threading.get_ident(), str(store))
    if key in _HELD_LOCKS:
        yield _HELD_LOCKS[key]
        return
    mode = None if mode is None else parse_mode(mode)
    check_writable(str(store))
    with StoreLock(store, storage_options, wait=wait, break_lock=break_lock,
                   command=command) as lock, store_file_mode(store, mode):
        _HELD_LOCKS[key] = lock
        try:
            replacement.recover(store, storage_options)  # what a killed --overwrite left
            yield lock
        finally:
            _HELD_LOCKS.pop(key, None)


def count(corpus: Sequence[str] | str, store: str, *, tokenizer: str | None = None,
          vocab_size: int | None = None, radius: int | None = None,
          aggregation: str | None = None, documents: str = "blank-line",
          text_field: str = "text", bos_token: str | None = None, heldout_fraction: float = 0.0,
          heldout_group_bytes: int = HoldOut.group_bytes,
          scheduler: str | None = None, workers: int | None = None,
          storage_options: dict | None = None, block_bytes: int | None = None,
          rows_per_block: int | None = None, allow_changed: bool = False,
          wait: bool | float = False, break_lock: bool = False, memory: str | int | None = None,
          tmp: str | None = None, force_memory: bool = False,
          mode: int | str | None = None, ngram: int | None = None) -> CountResult:
    """Stream a corpus into sparse counts and add them to a store (created if absent).

    The ingest is all or nothing: the store's counts change in one atomic step at the end,
    or not at all. Shards whose bytes were already ingested are skipped (no-op); a path
    already ingested whose bytes changed is refused unless ``allow_changed``, which adds
    the new bytes as new content (the old version's counts stay: counts cannot be
    subtracted). One writer at a time: another live writer makes this fail (or wait).

    Parameters
    ----------
    corpus : str or sequence of str
        Files, directories, globs or fsspec URLs; each file is a shard.
    store : str
        Store path or URL. An existing store is added to (same tokenizer, radius and
        aggregation are required).
    tokenizer : str, optional
        A ``tokenizer.json``; default: the store's, or a byte-level BPE trained on a sample.
    vocab_size : int
        Size of the trained BPE (ignored with ``tokenizer`` or an existing store).
    radius : int
        Context offsets R (default 3, or the store's).
    aggregation : {"cat", "sum"}
    documents : {"blank-line", "line", "file"}
        Document boundaries (they reset the context).
    heldout_fraction : float
        Fraction of line runs held out of counting and returned (for `solve`).
    heldout_group_bytes : int
        Bytes at which a held-out run ends (see `streamsolve.text.holdout.HoldOut`).
    scheduler : str, optional
        ``threads`` (default), ``processes``, ``sync`` or a ``dask.distributed`` address.
    workers : int, optional
        Local worker count.
    allow_changed : bool
        Add shards whose path was ingested with other bytes, as new content.
    wait : bool or float
        Wait for another writer's lock: ``True`` at most 600 s, or this many seconds.
    break_lock : bool
        Break an object-store lock held from another host.
    memory, force_memory : str or int, bool
        The run's memory budget (``2GB``, ``80%``): above the RAM (on a cluster, the workers'
        limits) or below one process's base it is refused, unless ``force_memory``.
    mode : int or str, optional
        Mode of the store's files on a local disk (e.g. ``0o600`` or ``"0600"``); default
        the umask, never looser than an existing store's (`streamsolve.store.permissions`).
    ngram : int, optional
        Also count suffix n-gram blocks of orders 2..``ngram`` (2..6; default: the store's,
        or none for a new store). An existing store's value must be kept.

    Returns
    -------
    CountResult
    """
    check_memory(memory, force_memory, remote=is_address(scheduler))  # before any work
    CountConfig(2, ngram=0 if ngram is None else ngram)  # issue 24 hook: checked before any work
    if tmp is not None and "://" not in str(tmp) and os.path.exists(tmp) and not os.path.isdir(tmp):
        raise ValueError(f"--tmp {tmp} is a file, not a directory: give a directory for spill "
                         "files (created if missing)")
    options = IngestOptions(
        tokenizer=tokenizer, vocab_size=vocab_size, radius=radius, aggregation=aggregation,
        documents=documents, text_field=text_field, bos_token=bos_token,
        heldout_fraction=heldout_fraction, heldout_group_bytes=heldout_group_bytes,
        scheduler=scheduler, workers=workers,
        storage_options=storage_options, block_bytes=block_bytes, rows_per_block=rows_per_block,
        allow_changed=allow_changed, memory=memory, tmp=tmp, force_memory=force_memory,
        ngram=ngram)  # issue 24 hook
    with _writer_lock(store, storage_options, wait=wait, break_lock=break_lock,
                      command="count", mode=mode) as lock:
        return ingest.run(corpus, store, options, lock)


def finalize(store: str, *, form: str = "row", smoothing: str | None = None,
             mu: float | None = None, alpha: float | None = None,
             calibrate: Sequence[str] | None = None, storage_options: dict | None = None,
             calibration_sample: int = CALIBRATION_POSITIONS, wait: bool | float = False,
             break_lock: bool = False, discount=None,
             smoothing_search: bool | str = "auto",
             mode: int | str | None = None) -> LanguageModel:
    """Compute the explicit weights of a store's counts (and optionally calibrate them).

    Parameters
    ----------
    store : str
        Store path or URL (with counts).
    form : {"row", "column"}
    smoothing : {"dirichlet", "additive", "none", "kneser-ney"}, optional
        Default: `default_smoothing` — Kneser–Ney for the row form (it wins on held-out
        text, BENCHMARKS.md), Dirichlet for the column form or when ``mu`` is given,
        additive when ``alpha`` is given.
    mu, alpha : float, optional
        Dirichlet strength (default V) / additive pseudo-count (default 0.1).
    discount : float or (float, float, float), optional
        Kneser–Ney discounts (default: estimated per block from its counts-of-counts).
    calibrate : list of str or False, optional
        Held-out text files; fit the R + 1 calibration scalars on them (and record them).
        None (default): re-calibrate on the text the store records (`solve`'s hold-out or
        the last ``calibrate`` files), warning loudly when that cannot be read again.
        False: no calibration.
    smoothing_search : {"auto", True, False}
        Choose the smoothing strength of each offset (Dirichlet ``mu``, Kneser–Ney
        discounts) on the calibration text before calibrating (see
        `streamsolve.core.strength_search`). Only when there is calibration text and
        neither ``mu`` nor ``discount`` is given; the choices are recorded in the weights
        and shown by `info`. "auto" (default): for Dirichlet only, where it measured better
        raw and calibrated; for Kneser–Ney the searched discounts measured 0.2-0.6% *worse*
        once calibrated (BENCHMARKS.md §8), so it needs ``True``.
    wait : bool or float
        Wait for another writer's lock: ``True`` at most 600 s, or this many seconds.
    break_lock : bool
        Break an object-store lock held from another host.
    mode : int or str, optional
        Mode of the store's files on a local disk, as in `count`.

    Returns
    -------
    LanguageModel
    """
    smoothing = default_smoothing(smoothing, form, mu, alpha)
    check_smoothing(smoothing, mu, alpha, form, discount)
    if calibrate:  # validated before anything is written
        try:
            calibrate = check_readable(calibrate, storage_options)
        except CorpusError as exc:
            raise CorpusError(f"--calibrate: {exc}") from exc
    if not (isinstance(calibration_sample, int) and calibration_sample > 0):
        raise ValueError(f"calibration_sample must be a positive integer, got {calibration_sample!r}")
    model_store = ModelStore(store, storage_options)
    if not model_store.exists():
        raise StoreError(f"no streamsolve store with counts at {store}")
    with _writer_lock(store, storage_options, wait=wait, break_lock=break_lock,
                      command="finalize", mode=mode):
        return _finalize_locked(model_store, form, smoothing, mu, alpha, calibrate,
                                storage_options, calibration_sample, discount,
                                smoothing_search)


class _Reader:
    """What `read_documents` needs of a model (its tokenizer and BOS id), before the
    weights exist."""

    def __init__(self, model_store):
        self.tokenizer = tokenizer_from_json(model_store.tokenizer_text())
        self.bos_id = model_store.config.bos_id


def search_positions(model_store, docs, sample: int, smoothing: str, form: str, mu, discount,
                     enabled: bool = True):
    """The held-out positions the smoothing-strength search runs on (the calibration's
    own sample: same size, same seed), or None when it does not run."""
    if enabled == "auto":
        enabled = smoothing == "dirichlet"  # searched KN measured worse once calibrated
    elif enabled not in (True, False):
        raise ValueError(f"smoothing_search must be 'auto', True or False, got {enabled!r}")
    if not enabled or mu is not None or discount is not None or form != "row" \
            or smoothing not in ("dirichlet", "kneser-ney") \
            or not docs or not sum(int(len(d)) for d in docs):
        return None
    config = model_store.config
    return sampled_positions(docs, config.radius, config.bos_id, sample, seed=0)


def _finalize_locked(model_store, form, smoothing, mu, alpha, calibrate, storage_options,
                     calibration_sample, discount=None, smoothing_search="auto",
                     search_documents=None) -> LanguageModel:
    """All or nothing: the weights (with their calibration) become the store's in one
    attribute write at the very end; any failure before leaves the previous weights.
    ``search_documents``: held-out documents to choose the smoothing strength on when
    there is no calibration text (`solve`)."""
    from .engine.progress import Stage

    reader = _Reader(model_store)
    recalibrate = None
    if calibrate:
        read_meta = model_store.meta.get("read_options", {})
        recalibrate = read_documents(calibrate, reader, read_meta.get("documents", "blank-line"),
                                     read_meta.get("text_field", "text"), storage_options,
                                     read_meta.get("max_line_bytes"))
    elif calibrate is None:
        recalibrate = _recorded_calibration(model_store, reader, storage_options)
    docs = search_documents if recalibrate is None else recalibrate[0]
    positions = search_positions(model_store, docs, calibration_sample, smoothing, form, mu,
                                 discount, smoothing_search)
    with Stage("finalize (explicit weights, row block by row block)") as stage:
        pending = compute_store_weights(model_store, form, smoothing, mu, alpha,
                                        discount=discount, search_positions=positions)
        pending.weights = attach_ngram(model_store, pending.weights)  # issue 24 hook
        blocks = sum(len(keys) for keys in pending.block_keys)
        stage.tokens = model_store.meta.get("totals", {}).get("tokens")
        stage.detail = f"{blocks} weight row blocks ({pending.reused_blocks} reused)"
    model = LanguageModel(pending.weights, reader.tokenizer)
    if recalibrate is not None:
        model, raw, cal = calibrate_checked(model, *recalibrate, calibration_sample)
    commit_store_weights(model_store, pending, model.weights)
    if calibrate:
        model_store.set_calibration_source({"kind": "files", "paths": list(calibrate)})
    return model


def _recorded_calibration(model_store, model, storage_options):
    """``(documents, bytes)`` of the text the store says its weights are calibrated on, or
    None (with a loud warning when earlier weights were calibrated and cannot be again)."""
    meta = model_store.meta
    source = meta.get("calibration_source")
    was_calibrated = bool((meta.get("weights") or {}).get("calibration"))
    try:
        if source and source.get("kind") == "files":
            read_meta = meta.get("read_options", {})
            return read_documents(check_readable(source["paths"], storage_options), model,
                                  read_meta.get("documents", "blank-line"),
                                  read_meta.get("text_field", "text"), storage_options,
                                  read_meta.get("max_line_bytes"))
        if source and source.get("kind") == "heldout":
            from .engine.finalize import recorded_heldout
            docs, n_bytes = recorded_heldout(model_store, source, storage_options)
            if docs:
                return docs, n_bytes
            raise OSError("the recorded hold-out is empty")
    except (CorpusError, OSError, KeyError, TypeError) as exc:
        logger.warning("CALIBRATION DROPPED: the store records its calibration text but it "
                       "cannot be read again (%s); the new weights are uncalibrated: pass "
                       "--calibrate FILES (calibrate=[...])", exc)
        return None
    if was_calibrated:
        logger.warning("CALIBRATION DROPPED: the previous weights were calibrated on text this "
                       "store does not record; the new weights are uncalibrated: pass "
                       "--calibrate FILES (calibrate=[...])")
    return None


def calibrate_checked(model: LanguageModel, docs, n_bytes: int,
                      sample: int = CALIBRATION_POSITIONS):
    """Calibrate on ``docs`` and keep it only if held-out cross-entropy does not get worse.

    Returns ``(model, raw Evaluation, calibrated Evaluation)``.
    """
    from .engine.progress import Stage

    docs = list(docs)
    # the raw eval gives the fit its start loss (the uncalibrated model's, on its sample)
    keep = None if model.weights.calibrated else calibration_keep(docs, sample)
    with Stage("held-out eval (uncalibrated)") as stage:
        raw = model.evaluate_ids(docs, n_bytes, keep=keep)
        stage.tokens = raw.tokens
    with Stage("calibration (R + 1 scalars, Newton steps on the O(nnz) scorer)") as stage:
        # with the start loss known, the calibrated eval also checks the fit's last step
        calibrated_model = model.calibrate(docs, sample_size=sample, check=keep is None,
                                           start_log_probs=None if keep is None else keep[1])
        stage.tokens = min(sample, raw.tokens)
        stage.detail = "tokens = calibration positions"
    after = None if keep is None else (keep[0], keep[1].copy())
    with Stage("held-out eval (calibrated)") as stage:
        calibrated = calibrated_model.evaluate_ids(docs, n_bytes, keep=after)
        stage.tokens = calibrated.tokens
    if after is not None and after[1].mean() < keep[1].mean():  # worse on the sample: redo
        logger.info("the calibration's last step raised the sample's loss; fitting again")
        calibrated_model = model.calibrate(docs, sample_size=sample, start_log_probs=keep[1])
        calibrated = calibrated_model.evaluate_ids(docs, n_bytes)
    if calibrated.cross_entropy > raw.cross_entropy:
        logger.warning("calibration made held-out cross-entropy worse (%.4f > %.4f); keeping "
                       "the uncalibrated weights", calibrated.cross_entropy, raw.cross_entropy)
        return model, raw, raw
    calibrated_model.weights.calibration_info = {
        "heldout_tokens": raw.tokens, "raw_cross_entropy": raw.cross_entropy,
        "calibrated_cross_entropy": calibrated.cross_entropy}
    return calibrated_model, raw, calibrated


def evaluate(store: str, texts: Sequence[str], storage_options: dict | None = None,
             uncalibrated: bool = False, memory: str | int | None = None) -> Evaluation:
    """Streaming held-out cross-entropy of a finalized store on text files (``memory``
    bounds the cache of weight row blocks, see `LanguageModel.open`, and the window of text
    read at a time, see `streamsolve.documents.window_bytes`)."""
    model_store = ModelStore(store, storage_options).snapshot()  # one weights version
    model = LanguageModel.open(model_store, memory=memory)
    if uncalibrated:
        model = LanguageModel(model.weights.uncalibrated(), model.tokenizer)
    read_meta = model_store.meta.get("read_options", {})
    stats = ReadStats()
    docs = iter_token_pieces(texts, model, read_meta.get("documents", "blank-line"),
                             read_meta.get("text_field", "text"), storage_options, stats,
                             read_meta.get("max_line_bytes"), window_bytes(memory),
                             heap_limit(memory))
    from .engine.progress import Stage

    with Stage("eval") as stage:
        result = model.evaluate_ids(docs)
        stage.tokens = result.tokens
    result.bytes = stats.bytes
    result.bits_per_byte = result.cross_entropy * result.tokens / math.log(2) / stats.bytes
    return result


def refine(store: str, train: Sequence[str] | str, heldout: Sequence[str] | str,
           **options) -> dict:
    """Refine a finalized store's LM by backpropagation, early-stopped on ``heldout``, and
    commit the best weights as a new version (``streamsolve refine``; needs ``[torch]``).

    A thin entry point to `streamsolve.refine.refine_store`, whose keyword ``options`` it
    takes (``init``, ``optimizer``, ``lr``, ``steps``, ``batch``, ``updates``,
    ``heldout_tokens``, ``device``, ...). Not re-exported as ``streamsolve.refine``: that
    name is the module.
    """
    from .refine import refine_store

    return refine_store(store, [train] if isinstance(train, str) else list(train),
                        [heldout] if isinstance(heldout, str) else list(heldout), **options)


def train(store: str, train: Sequence[str] | str, heldout: Sequence[str] | str, **options):
    """``streamsolve train`` (issue 25; needs ``[torch]``): `streamsolve.network.command`."""
    from .network import command

    return command.run(None, command.Options(store=store, train=train, heldout=heldout, **options))


def score(store: str, texts: Sequence[str] = ("-",), *, per_token: bool = False,
          storage_options: dict | None = None, uncalibrated: bool = False,
          memory: str | int | None = None, stdin=None) -> Iterator[dict]:
    """Log-probabilities of text under a finalized store, as records (an iterator).

    One record per document ``{"document", "tokens", "log_prob", "bytes"}`` (natural log),
    or with ``per_token`` one per token ``{"document", "token", "text", "log_prob"}``, then a
    summary ``{"summary": True, "tokens", "cross_entropy", "perplexity", "bits_per_byte",
    ...}``. ``texts`` are files (or globs); ``"-"`` reads ``stdin`` (default
    ``sys.stdin.buffer``). Documents are split as the store's counting split them, and read
    a window of text at a time (`streamsolve.documents.window_bytes` of ``memory``): a
    document's record sums its windows.

    Raises
    ------
    StoreError
        No weights, or stale weights.
    ValueError
        Empty text, or text without tokens (raised when the iterator reaches the end).
    """
    from .score_text import file_documents, score_documents, stream_documents

    model_store = ModelStore(store, storage_options).snapshot()  # one weights version
    model = LanguageModel.open(model_store, memory=memory)
    if uncalibrated:
        model = LanguageModel(model.weights.uncalibrated(), model.tokenizer)
    read_meta = model_store.meta.get("read_options", {})
    mode, field = read_meta.get("documents", "blank-line"), read_meta.get("text_field", "text")
    texts = list(texts) or ["-"]
    if "-" in texts and texts != ["-"]:
        raise ValueError("read either files or stdin (-), not both")
    window = window_bytes(memory)  # text read at a time: a long document comes in pieces
    if texts == ["-"]:
        documents = stream_documents(stdin if stdin is not None else sys.stdin.buffer, mode,
                                     window)
    else:
        documents = file_documents(check_readable(texts, storage_options), mode, field,
                                   storage_options, window)
    return score_documents(model, documents, per_token, heap_limit(memory))


def info(store: str, storage_options: dict | None = None) -> dict:
    """A summary of a store: configuration, sizes, shards, weights and the provenance
    ``history`` (every event, oldest first; empty for stores older than the history)."""
    model_store = ModelStore(store, storage_options).snapshot()
    if not model_store.exists():
        raise StoreError(f"no streamsolve store with counts at {store}")
    meta = model_store.meta
    config = meta["config"]
    weights = meta.get("weights")
    return {
        "store": store,
        "vocab_size": config["vocab_size"],
        "radius": config["radius"],
        "aggregation": config["aggregation"],
        "bos_id": config["bos_id"],
        "tokens": meta["counts"]["tokens"],
        "nnz": meta["counts"]["nnz"],
        "shards": len(meta.get("shards", [])),
        "shard_list": [s["path"] for s in meta.get("shards", [])],
        "totals": meta.get("totals", {}),
        "tokenizer_sha256": meta["tokenizer"]["sha256"],
        "read_options": meta.get("read_options", {}),
        "versions": meta.get("versions", {}),
        "smoothing": None if not weights else smoothing_values(weights, config),
        "weights": None if not weights else {
            **{k: v for k, v in weights.items() if k != "counts_id"},
            "stale": weights["counts_id"] != meta["counts"]["id"]},
        "history": model_store.history,
        **ngram_info(model_store),  # issue 24 hook: orders, distinct contexts and entries
    }



def verify(store: str, storage_options: dict | None = None) -> dict:
    """Read and check everything a store's current state uses (see `ModelStore.verify`).

    Returns
    -------
    dict
        ``ok`` is False when anything is damaged; ``damaged`` lists every damaged block as
        ``{"path", "problem"}``.
    """
    report = ModelStore(store, storage_options).verify()  # reports damaged attributes too
    report["store"] = store
    return report


def solve(corpus: Sequence[str] | str, store: str, *, heldout_fraction: float = 0.05,
          calibrate: bool = True, form: str = "row", smoothing: str | None = None,
          mu: float | None = None, alpha: float | None = None, overwrite: bool = False,
          discount=None, smoothing_search: bool | str = "auto", **count_kwargs) -> dict:
    """Count + finalize + calibrate + evaluate on a part of the corpus held out by `count`.

    The whole run holds the store's writer lock (taken once, before anything is changed).

    Parameters
    ----------
    smoothing : str, optional
        As in `finalize` (default: Kneser–Ney for the row form).
    smoothing_search : {"auto", True, False}
        With ``calibrate``, choose the smoothing strength per offset on the held-out part
        first (as `finalize`, where "auto" is explained; not with ``mu`` or ``discount``).
    overwrite : bool
        Replace the streamsolve store at ``store`` (refused for anything that is not a
        streamsolve store, and while another writer holds the lock). The new store is
        built beside it and swapped in only once complete (`streamsolve.store.replacement`):
        any failure leaves the old store as it was.

    Returns
    -------
    dict
        Summary: tokens, distinct pairs, seconds, tokens/s, held-out perplexity (raw and
        calibrated), store path.
    """
    smoothing = default_smoothing(smoothing, form, mu, alpha)
    check_smoothing(smoothing, mu, alpha, form, discount)
    storage_options = count_kwargs.get("storage_options")
    with _writer_lock(store, storage_options, wait=count_kwargs.get("wait", False),
                      break_lock=count_kwargs.get("break_lock", False), command="solve",
                      mode=count_kwargs.get("mode")):
        def solve_at(target: str) -> dict:
            return _solve_locked(corpus, target, heldout_fraction, calibrate, form, smoothing,
                                 mu, alpha, count_kwargs, discount, smoothing_search)

        if not overwrite:
            return solve_at(store)
        summary = replacement.replace_store(store, storage_options, solve_at, lambda target: (
            _writer_lock(target, storage_options, wait=False, break_lock=False,
                         command="solve --overwrite")))
        return {**summary, "store": store}


#: Fewer held-out tokens than this make `solve` warn that its held-out figures are noisy.
MIN_HELDOUT_TOKENS = 1000


def _solve_locked(corpus, store, heldout_fraction, calibrate, form, smoothing, mu, alpha,
                  count_kwargs, discount=None, smoothing_search="auto") -> dict:
    started = time.perf_counter()
    from .engine.memory import input_bytes

    so = count_kwargs.get("storage_options")
    size, ratio = input_bytes(expand_corpus(corpus, so), so) if heldout_fraction > 0 else (0, 1)
    holdout = HoldOut.for_text(heldout_fraction, size * ratio)
    counted = count(corpus, store, heldout_fraction=heldout_fraction,
                    heldout_group_bytes=holdout.group_bytes, **count_kwargs)
    count_seconds = counted.seconds
    t0 = time.perf_counter()
    model = _finalize_locked(ModelStore(store, so), form, smoothing, mu, alpha, False, so,
                             CALIBRATION_POSITIONS, discount, smoothing_search,
                             search_documents=counted.heldout if calibrate else None)
    finalize_seconds = time.perf_counter() - t0
    summary = counted.summary()
    summary.update({"count_seconds": round(count_seconds, 3),
                    "finalize_seconds": round(finalize_seconds, 3)})
    summary["heldout"] = holdout.describe() if heldout_fraction > 0 else None
    summary["heldout_documents"] = len(counted.heldout)
    summary["heldout_bytes"] = counted.heldout_bytes
    if counted.heldout:
        t0 = time.perf_counter()
        docs = counted.heldout
        held_tokens = sum(int(d.size) for d in docs)
        if held_tokens < MIN_HELDOUT_TOKENS:
            logger.warning("only %d tokens were held out (fewer than %d): the held-out figures "
                           "are noisy; raise --heldout or add text", held_tokens, MIN_HELDOUT_TOKENS)
        if calibrate:
            calibrated_model, raw, cal = calibrate_checked(model, docs, counted.heldout_bytes)
            model_store = ModelStore(store, count_kwargs.get("storage_options"))
            if calibrated_model is not model:
                model_store.set_calibration(calibrated_model.weights.params()["calibration"])
            model_store.set_calibration_source({  # so a later finalize re-calibrates on it
                "kind": "heldout", "fraction": holdout.fraction,
                "group_lines": holdout.group_lines, "group_bytes": holdout.group_bytes,
                "max_tokens_per_shard": holdout.max_tokens_per_shard,
                "shards": [s["path"] for s in counted.shards if not s["skipped"]]})
            model = calibrated_model
        else:
            raw = cal = model.evaluate_ids(docs, counted.heldout_bytes)
        summary.update({
            "heldout_tokens": raw.tokens,
            "heldout_cross_entropy": round(raw.cross_entropy, 4),
            "heldout_perplexity": round(raw.perplexity, 3),
            "heldout_bits_per_byte": round(raw.bits_per_byte, 4) if raw.bits_per_byte else None,
            "calibrated_cross_entropy": round(cal.cross_entropy, 4),
            "calibrated_perplexity": round(cal.perplexity, 3),
            "calibration": model.weights.params()["calibration"],
            "smoothing_search": model.weights.params().get("smoothing_search"),
            "eval_seconds": round(time.perf_counter() - t0, 3),
        })
    else:
        logger.warning("nothing was held out (corpus too small?): no held-out evaluation")
    summary["seconds"] = round(time.perf_counter() - started, 3)
    summary["tokens_per_second"] = round(counted.new_tokens / count_seconds) if count_seconds else None
    summary["sample"] = model.generate("The ", max_tokens=12) if model.tokenizer else None
    return summary
