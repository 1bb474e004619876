"""The finalized language model: logits, log-probabilities, perplexity, generation, calibration.

Evaluation streams documents in batches of positions: the logits of a batch are a dense
(B, V) array built from R sparse rows and the rank-one terms, never a V x V matrix.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .core.calibration import logsumexp  # noqa: F401 (logsumexp: public here too)
from .core.positions import as_piece, grouped_piece_positions, sample_index, sampled_positions
from .core.scoring import fit_calibration_scored
from .core.weights import ExplicitWeights
from .text.tokenizer import is_tokenizer_panic, panic_error

logger = logging.getLogger(__name__)

#: Floats of dense logits per evaluation batch (B * V); bounds evaluation memory.
EVAL_BATCH_FLOATS = 1 << 20
#: Positions per batch of the sparse evaluation path (distinct contexts are scored once).
SPARSE_EVAL_BATCH = 1 << 14
#: Seconds between progress lines of a long evaluation.
PROGRESS_SECONDS = 30.0
#: Held-out positions calibration fits on by default (drawn uniformly; all when fewer).
CALIBRATION_POSITIONS = 1 << 15


def _batches(documents, radius, bos_id, batch) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(contexts, targets)`` of consecutive positions of the documents, ``batch`` at a time
    (the last one shorter); the positions of a group of about ``batch`` tokens are built at
    once (`streamsolve.core.positions.grouped_piece_positions`), not document by document.
    An item is a document's ids, or a piece ``(ids, starts)`` of one: a piece that does not
    start a document continues the one before, so a long document streamed in pieces
    gives the positions of the whole."""
    carry_ctx = np.zeros((0, radius), dtype=np.int64)
    carry_tgt = np.zeros(0, dtype=np.int64)
    for ctx, tgt in grouped_piece_positions(documents, radius, bos_id, batch):
        ctx, tgt = np.concatenate([carry_ctx, ctx]), np.concatenate([carry_tgt, tgt])
        full = tgt.size - tgt.size % batch
        for start in range(0, full, batch):
            yield ctx[start:start + batch], tgt[start:start + batch]
        carry_ctx, carry_tgt = ctx[full:], tgt[full:]
    if carry_tgt.size:
        yield carry_ctx, carry_tgt


def prefetched(documents: Iterable, tokens: int = SPARSE_EVAL_BATCH,
               depth: int = 8) -> Iterator:
    """The documents of ``documents``, produced on a background thread (reading and
    tokenizing, which release the GIL, overlap the scoring of earlier ones) and handed
    over in groups of about ``tokens`` tokens; at most ``depth`` groups wait. An error of
    the producer is raised here; leaving the loop early stops the producer."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            group, size = [], 0
            for doc in documents:
                group.append(doc)
                size += len(as_piece(doc)[0])
                if size >= tokens:
                    if not put(group):
                        return
                    group, size = [], 0
            if group and not put(group):
                return
            put(done)
        except BaseException as error:  # handed to the consumer
            put(error)

    thread = threading.Thread(target=produce, name="streamsolve-read", daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield from item
    finally:
        stop.set()


@dataclasses.dataclass
class Evaluation:
    """Held-out evaluation figures."""

    tokens: int
    bytes: int
    cross_entropy: float  # nats per token
    perplexity: float
    bits_per_byte: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class LanguageModel:
    """A single-layer softmax language model with explicit weights.

    Parameters
    ----------
    weights : ExplicitWeights
    tokenizer : tokenizers.Tokenizer, optional
        Needed for text input and generation.
    bos_id : int, optional
        Beginning-of-document id (defaults to the counting configuration's).
    """

    def __init__(self, weights: ExplicitWeights, tokenizer=None, bos_id: int | None = None):
        self.weights = weights
        self.tokenizer = tokenizer
        self.config = weights.config
        self.bos_id = self.config.bos_id if bos_id is None else bos_id

    @classmethod
    def open(cls, store: str, storage_options: dict | None = None,
             allow_stale: bool = False, memory: str | int | None = None) -> "LanguageModel":
        """Load the finalized model of a store (refuses stale weights).

        The sparse weights stay in the store and are read row block by row block through a
        bounded cache: a quarter of ``memory`` (e.g. ``"1GB"``) when given, else
        `streamsolve.engine.finalize.DEFAULT_CACHE_BYTES`.
        """
        from .engine.finalize import read_store_weights
        from .store.model_store import ModelStore
        from .text.tokenizer import tokenizer_from_json

        model_store = store if hasattr(store, "read_weights") else ModelStore(store, storage_options)
        model_store = model_store.snapshot()  # the weights and tokenizer of one state
        cache_bytes = None
        if memory is not None:
            from .engine.memory import parse_memory

            cache_bytes = parse_memory(memory) // 4
        weights = read_store_weights(model_store, allow_stale=allow_stale, cache_bytes=cache_bytes)
        tokenizer = tokenizer_from_json(model_store.tokenizer_text())
        return cls(weights, tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def batch_size(self) -> int:
        return max(16, EVAL_BATCH_FLOATS // self.vocab_size)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of a text (tokenized line by line, as when counting)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids")
        lines = text.splitlines(keepends=True)
        try:
            encodings = self.tokenizer.encode_batch_fast(lines, add_special_tokens=False)
        except BaseException as exc:
            if is_tokenizer_panic(exc):
                raise panic_error(exc, self.tokenizer.to_str()) from None
            raise
        return np.asarray([i for enc in encodings for i in enc.ids], dtype=np.int64)

    def encode_many(self, texts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Token ids of several texts, each given as its lines, tokenized as counting
        tokenizes a read block (lines joined into large inputs where that cannot change the
        ids, one batched call; `streamsolve.text.encoding.LineEncoder`); each equals
        ``encode("".join(lines))``."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids")
        from .text.encoding import LineEncoder

        if getattr(self, "_line_encoder", None) is None:
            self._line_encoder = LineEncoder(self.tokenizer.to_str())
        pieces = [([seg for line in lines for seg in line.splitlines(keepends=True)], True)
                  for lines in texts]
        return [ids for ids, _ in self._line_encoder.encode_documents(pieces)]

    def context(self, ids: Sequence[int]) -> np.ndarray:
        """The context row (R,) for predicting the token after ``ids`` (BOS-padded)."""
        R = self.config.radius
        ids = list(ids)[-R:]
        padded = [self.bos_id] * (R - len(ids)) + ids
        return np.asarray(padded[::-1], dtype=np.int64)

    def logits(self, contexts) -> np.ndarray:
        """Logits for contexts ``(B, R)`` (offset 1 first) or for one id sequence (a prompt)."""
        contexts = np.asarray(contexts)
        if contexts.ndim == 1:
            return self.weights.logits(self.context(contexts)[None, :])[0]
        return self.weights.logits(contexts)

    def log_prob(self, text_or_ids) -> float:
        """Total log-probability (nats) of a document, from its start."""
        ids = self.encode(text_or_ids) if isinstance(text_or_ids, str) else np.asarray(text_or_ids)
        total = 0.0
        for ctx, tgt in _batches([ids], self.config.radius, self.bos_id, SPARSE_EVAL_BATCH):
            total += float(np.sum(self.weights.target_log_probs(ctx, tgt)))
        return total

    def evaluate_ids(self, documents: Iterable[np.ndarray], n_bytes: int | None = None,
                     keep: tuple[np.ndarray, np.ndarray] | None = None) -> Evaluation:
        """Streaming cross-entropy over documents of token ids (sparse: O(nnz) per token).

        Logs tokens/s (and, when ``documents`` has a length, an ETA) every
        `PROGRESS_SECONDS` on long runs. ``keep = (index, out)``: ``out[k]`` receives the
        log-probability of the position ``index[k]`` (ascending, counted over all the
        documents' tokens in order, as `calibration_keep` counts them).
        """
        expected = sum(len(d) for d in documents) if isinstance(documents, Sequence) else None
        total, tokens = 0.0, 0
        started = last = time.perf_counter()
        if not isinstance(documents, Sequence):  # a stream: read ahead on a thread
            documents = prefetched(documents)
        for ctx, tgt in _batches(documents, self.config.radius, self.bos_id, SPARSE_EVAL_BATCH):
            log_probs = self.weights.target_log_probs(ctx, tgt)
            total -= float(np.sum(log_probs))
            if keep is not None:
                lo, hi = np.searchsorted(keep[0], [tokens, tokens + tgt.size])
                keep[1][lo:hi] = log_probs[keep[0][lo:hi] - tokens]
            tokens += tgt.size
            now = time.perf_counter()
            if now - last >= PROGRESS_SECONDS:
                last = now
                rate = tokens / (now - started)
                eta = f", ETA {(expected - tokens) / rate:.0f} s" if expected else ""
                logger.info("    scored %s tokens, %s tokens/s%s", f"{tokens:,}",
                            f"{rate:,.0f}", eta)
        if tokens == 0:
            raise ValueError("no tokens to evaluate")
        ce = total / tokens
        bpb = total / math.log(2) / n_bytes if n_bytes else None
        return Evaluation(tokens, int(n_bytes or 0), ce, math.exp(ce), bpb)

    def perplexity(self, texts: Iterable[str]) -> float:
        """Perplexity of texts (each one document)."""
        docs = [self.encode(t) for t in texts]
        return self.evaluate_ids(docs).perplexity

    def next_token_distribution(self, prompt: str, top_k: int = 10) -> list[tuple[str, float]]:
        """The ``top_k`` most likely next tokens after ``prompt`` and their probabilities."""
        logits = self.logits(self.encode(prompt))
        probs = np.exp(logits - logsumexp(logits))
        top = np.argsort(-probs)[:top_k]
        return [(self.tokenizer.decode([int(i)], skip_special_tokens=False), float(probs[i]))
                for i in top]

    def generate(self, prompt: str = "", max_tokens: int = 20, temperature: float = 0.0,
                 seed: int | None = 0, top_k: int | None = None,
                 top_p: float | None = None) -> str:
        """Continue ``prompt``; the text of `iter_generate` joined (parameters there)."""
        return "".join(self.iter_generate(prompt, max_tokens, temperature, seed, top_k, top_p))

    def iter_generate(self, prompt: str = "", max_tokens: int = 20, temperature: float = 0.0,
                      seed: int | None = 0, top_k: int | None = None,
                      top_p: float | None = None) -> Iterator[str]:
        """Continue ``prompt``: an iterator of text as it is generated (streaming; the
        arguments are checked at once).

        Each step costs one dense V-vector of logits from the R context rows (O(R V), so
        the whole is linear in ``max_tokens``). Greedy when ``temperature`` is 0 or
        ``top_k`` is 1; otherwise sampled from ``softmax(logits / temperature)`` restricted
        to the ``top_k`` most likely tokens and then to the smallest set of them whose
        probability reaches ``top_p`` (nucleus sampling). The BOS token is never produced.
        Text is yielded once it decodes to whole characters (a byte-level token may end
        inside a UTF-8 sequence).

        Parameters
        ----------
        prompt : str
        max_tokens : int
        temperature : float, >= 0
        seed : int or None
            The same seed gives the same text.
        top_k : int, optional
            >= 1.
        top_p : float, optional
            In (0, 1].

        Yields
        ------
        str
        """
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and not (isinstance(top_k, (int, np.integer)) and top_k >= 1):
            raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; generation needs one")
        return self._generated_text(prompt, max_tokens, temperature, seed, top_k, top_p)

    def _generated_text(self, prompt, max_tokens, temperature, seed, top_k, top_p):
        rng = np.random.default_rng(seed)
        R = self.config.radius
        context = collections.deque(self.encode(prompt)[-R:].tolist() if prompt else [],
                                    maxlen=R)
        pending: list[int] = []
        for _ in range(max_tokens):
            logits = self.logits(np.asarray(context, dtype=np.int64))
            logits[self.bos_id] = -np.inf
            nxt = self._next_token(logits, temperature, top_k, top_p, rng)
            context.append(nxt)
            pending.append(nxt)
            text = self.tokenizer.decode(pending)
            if not text.endswith("\ufffd") or len(pending) >= 8:
                pending = []
                yield text
        if pending:
            yield self.tokenizer.decode(pending)

    @staticmethod
    def _next_token(logits: np.ndarray, temperature: float, top_k, top_p, rng) -> int:
        if temperature == 0 or top_k == 1:
            return int(np.argmax(logits))
        candidates = np.arange(logits.size)
        if top_k is not None and top_k < logits.size:
            candidates = np.argpartition(-logits, top_k - 1)[:top_k]
        z = logits[candidates] / temperature
        order = np.argsort(-z, kind="stable")
        candidates, z = candidates[order], z[order]
        p = np.exp(z - z[0])
        p /= p.sum()
        if top_p is not None and top_p < 1:
            keep = int(np.searchsorted(np.cumsum(p), top_p)) + 1
            candidates, p = candidates[:keep], p[:keep] / p[:keep].sum()
        return int(candidates[rng.choice(candidates.size, p=p)])

    def calibrate(self, documents: Sequence[np.ndarray],
                  sample_size: int = CALIBRATION_POSITIONS, seed: int = 0,
                  start_log_probs: np.ndarray | None = None,
                  check: bool = True) -> "LanguageModel":
        """Fit the R + 1 calibration scalars (DESIGN §3) on held-out documents.

        Up to ``sample_size`` positions are drawn uniformly across all the documents (all of
        them when there are fewer). Each Newton step (`streamsolve.core.newton`; L-BFGS
        without the C kernel's product path) is one O(nnz) pass over the sample's distinct
        contexts (`streamsolve.core.scoring.CalibrationObjective`), so the sample can be
        large; the steps far from the optimum run on uniform subsamples of 1,024 then 4,096
        positions, and the whole sample costs one Hessian pass and one or two loss-only
        passes (one with ``start_log_probs``). The fit starts at the uncalibrated point and
        its result is kept only if the sample's loss does not go up.

        ``start_log_probs``: the uncalibrated model's log-probabilities of the sampled
        positions (`calibration_keep` order, e.g. kept by `evaluate_ids` from the raw
        evaluation), which spares the fit its loss pass at the start. ``check=False``: the
        fit's last step is not confirmed by a loss pass either; the caller must check the
        sample's loss at the result (as `streamsolve.api.calibrate_checked` does from its
        calibrated evaluation) and calibrate again with ``check=True`` if it went up.

        Returns
        -------
        LanguageModel
            A model with calibrated weights.
        """
        if hasattr(self.weights, "fit_calibration"):  # issue 24 hook: n-gram blocks
            return LanguageModel(self.weights.uncalibrated().fit_calibration(
                documents, sample_size, seed), self.tokenizer, self.bos_id)
        weights = self.weights.uncalibrated()
        ctx, tgt = sampled_positions(documents, self.config.radius, self.bos_id, sample_size,
                                     seed)
        start = None
        at_start = np.array_equal(np.r_[self.weights.beta, self.weights.gamma],
                                  np.r_[weights.beta, weights.gamma])
        if start_log_probs is not None and at_start and np.size(start_log_probs) == tgt.size:
            start = -float(np.mean(start_log_probs))
        from .engine.cluster_calibration import cluster_evaluator

        parts = weights.scoring_parts()  # in a cluster job, Newton passes go to the workers
        evaluate = cluster_evaluator(parts)
        try:
            fit = fit_calibration_scored(parts, ctx, tgt,
                                         theta0=np.r_[weights.beta, weights.gamma],
                                         max_iter=100, start_loss=start, check=check,
                                         evaluate=evaluate)
        finally:
            if evaluate is not None:
                evaluate.close()
        theta = fit.theta
        logger.info("calibration on %d positions: %.4f -> %.4f nats/token (beta=%s, gamma=%.3f)",
                    tgt.size, fit.loss_before, fit.loss_after,
                    np.round(theta[:-1], 3).tolist(), theta[-1])
        return LanguageModel(weights.with_calibration(theta[:-1], theta[-1]), self.tokenizer,
                             self.bos_id)


def calibration_keep(documents: Sequence[np.ndarray],
                     sample_size: int = CALIBRATION_POSITIONS, seed: int = 0):
    """``(index, out)`` for `LanguageModel.evaluate_ids` to keep the log-probabilities of the
    positions `LanguageModel.calibrate` will draw (`streamsolve.core.positions.sample_index`,
    ascending over all the documents' tokens in order; None when there are no tokens)."""
    if not any(len(d) for d in documents):
        return None
    index = sample_index(int(sum(len(d) for d in documents)), sample_size, seed)
    return index, np.empty(index.size)
