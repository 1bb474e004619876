"""A store's attributes (``zarr.json``): their digest and the validation of every one.

The attributes say which counts generation, weights version and weight blocks a store's
state is, with the calibration scalars, the tokenizer's and shards' hashes and the read
options: a wrong value there silently changes every result. So:

- **Digest.** Every attribute write (`with_digest`) records ``attributes_sha256``: the
  SHA-256 of the canonical JSON of all the other attributes (sorted keys, no whitespace),
  in the same atomic write. Every open checks it (`check_attributes`, after the
  validation): a mismatch (a hand edit, a damaged file) is one line naming the store and
  the fix. Stores written before the digest existed open as "legacy" and get one on their
  next commit.
- **Validation.** `validate_meta` checks every attribute's type and range before anything
  is read by it (and ``retired``, whose entries a later commit deletes, may only name
  counts generations, weights versions and weight blocks): one line naming the store,
  every bad attribute, and the fix.

Pure: reads no store.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re

from .layout import (FORMAT_VERSION, MAX_RADIUS, REFINED, StoreConfigError, StoreCorruptError,
                     row_blocks)

#: The attribute holding the digest of all the others.
DIGEST_KEY = "attributes_sha256"
#: `attributes_status` values.
DIGEST_OK = "digest ok"
DIGEST_LEGACY = "legacy, no attribute digest"
DIGEST_MISMATCH = "digest mismatch"

_SHA256 = re.compile(r"\w{64}")  # a SHA-256 hex digest (tests use placeholders like "x" * 64)
_NAME = re.compile(r"[0-9A-Za-z]+")
#: What ``retired`` may name: a counts generation, a weights version, a weight row block.
_RETIRABLE = re.compile(r"counts/g[0-9]+|weights/v[0-9A-Za-z]+|weights/blocks/[0-9A-Za-z]+")
_SMOOTHINGS = ("dirichlet", "additive", "none", "kneser-ney")


# -- the digest ------------------------------------------------------------------------------

def attributes_digest(meta: dict) -> str:
    """SHA-256 of the canonical JSON of ``meta`` without its digest (sorted keys, compact;
    computed on the JSON round trip, so tuples and lists, int and str keys agree)."""
    body = {key: value for key, value in meta.items() if key != DIGEST_KEY}
    normalized = json.loads(json.dumps(body, allow_nan=True))
    text = json.dumps(normalized, sort_keys=True, separators=(",", ":"), allow_nan=True,
                      ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def with_digest(meta: dict) -> dict:
    """A copy of ``meta`` recording the digest of its other attributes."""
    body = {key: value for key, value in meta.items() if key != DIGEST_KEY}
    return {**body, DIGEST_KEY: attributes_digest(body)}


def attributes_status(meta: dict) -> str:
    """`DIGEST_OK`, `DIGEST_LEGACY` (no digest recorded) or `DIGEST_MISMATCH`."""
    recorded = meta.get(DIGEST_KEY)
    if recorded is None:
        return DIGEST_LEGACY
    return DIGEST_OK if recorded == attributes_digest(meta) else DIGEST_MISMATCH


def digest_problem(url: str) -> str:
    """What is wrong with attributes that fail their digest, and what to do."""
    return (f"zarr.json: the attributes of store {url} do not match their recorded digest "
            "(hand-edited or damaged): nothing was read or changed; restore zarr.json from a "
            f"backup (`streamsolve verify {url}` lists any other damage) or rebuild the store")


def check_attributes(meta: dict, url: str) -> str:
    """Check every attribute, then the digest (when recorded); returns `attributes_status`.

    Validation comes first: it names the malformed attribute, where the digest can only say
    that something changed.

    Raises
    ------
    StoreConfigError
        When an attribute is malformed or out of range (`validate_meta`).
    StoreCorruptError
        When the attributes differ from their digest.
    """
    validate_meta(meta, url)
    status = attributes_status(meta)
    if status == DIGEST_MISMATCH:
        raise StoreCorruptError(digest_problem(url))
    return status


# -- validation ------------------------------------------------------------------------------

def _is_int(value, low: int, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def is_timestamp(value) -> bool:
    """Whether ``value`` is an ISO 8601 time with a UTC offset (as `utc_now` writes)."""
    if not isinstance(value, str):
        return False
    try:
        return datetime.datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _config_problems(meta: dict) -> list[str]:
    config = meta.get("config")
    if not isinstance(config, dict):
        return ["config is missing or not an object"]
    problems = []
    vocab_size = config.get("vocab_size")
    if not _is_int(vocab_size, 2, 3_000_000_000):
        problems.append(f"config.vocab_size {vocab_size!r} is not an integer in 2..3e9")
    if not _is_int(config.get("radius"), 1, MAX_RADIUS):
        problems.append(f"config.radius {config.get('radius')!r} is not an integer in "
                        f"1..{MAX_RADIUS}")
    if config.get("aggregation") not in ("cat", "sum"):
        problems.append(f"config.aggregation {config.get('aggregation')!r} is not 'cat' or 'sum'")
    if "ngram" in config and not _is_int(config["ngram"], 0, 6):  # issue 24
        problems.append(f"config.ngram {config['ngram']!r} is not an integer in 0..6")
    if _is_int(vocab_size, 2) and not _is_int(config.get("bos_id"), 0, vocab_size - 1):
        problems.append(f"config.bos_id {config.get('bos_id')!r} is outside 0..{vocab_size - 1}")
    tokenizer = meta.get("tokenizer")
    if not isinstance(tokenizer, dict) or tokenizer.get("vocab_size") != vocab_size:
        problems.append("tokenizer.vocab_size does not match config.vocab_size")
    elif not (isinstance(tokenizer.get("sha256"), str) and _SHA256.fullmatch(tokenizer["sha256"])):
        problems.append("tokenizer.sha256 is not a SHA-256 digest")
    if not _is_int(meta.get("rows_per_block"), 1):
        problems.append(f"rows_per_block {meta.get('rows_per_block')!r} is not an integer >= 1")
    return problems


def n_weight_blocks(config: dict) -> int:
    """Count (and weight) blocks of a store's configuration: R for ``cat``, 1 for ``sum``."""
    return config["radius"] if config["aggregation"] == "cat" else 1


def _counts_problems(meta: dict) -> list[str]:
    counts = meta.get("counts")
    if counts is None:
        return []
    if not isinstance(counts, dict):
        return ["counts is not an object"]
    problems = []
    if not _is_int(counts.get("generation"), 1):
        problems.append(f"counts.generation {counts.get('generation')!r} is not an integer >= 1")
    if not _is_int(counts.get("tokens"), 0):
        problems.append(f"counts.tokens {counts.get('tokens')!r} is not an integer >= 0")
    if "id" in counts and not (isinstance(counts["id"], str) and _NAME.fullmatch(counts["id"])):
        problems.append("counts.id is not an alphanumeric name")
    if "committed" in counts and not is_timestamp(counts["committed"]):
        problems.append(f"counts.committed {str(counts['committed'])[:40]!r} is not an ISO "
                        "8601 time")
    if not isinstance(counts.get("digests", False), bool):
        problems.append("counts.digests is not true or false")
    nnz = counts.get("nnz")
    config = meta["config"]
    n_blocks = n_weight_blocks(config)
    if not (isinstance(nnz, list) and len(nnz) == n_blocks and all(_is_int(n, 0) for n in nnz)):
        problems.append(f"counts.nnz {str(nnz)[:40]} is not {n_blocks} non-negative integers "
                        f"(one per count block of radius {config['radius']}, aggregation "
                        f"{config['aggregation']})")
    return problems


def _calibration_problems(calibration, n_blocks: int) -> list[str]:
    if calibration is None:
        return []
    if not isinstance(calibration, dict):
        return ["weights.calibration is not an object"]
    beta = calibration.get("beta")
    problems = []
    if not (isinstance(beta, list) and len(beta) == n_blocks and all(map(_is_number, beta))):
        problems.append(f"weights.calibration.beta {str(beta)[:40]} is not {n_blocks} finite "
                        "numbers (one per weight block)")
    if not _is_number(calibration.get("gamma")):
        problems.append(f"weights.calibration.gamma {calibration.get('gamma')!r} is not a "
                        "finite number")
    return problems


def _strength_problems(weights: dict, n_blocks: int) -> list[str]:
    problems = []
    for name in ("mu", "alpha"):
        value = weights.get(name)
        values = value if isinstance(value, list) else [value]
        if value is not None and not (all(_is_number(v) and v > 0 for v in values)
                                      and len(values) in (1, n_blocks)):
            problems.append(f"weights.{name} {str(value)[:40]} is not a positive number (or "
                            "one per weight block)")
    discounts = weights.get("discounts")
    if discounts is not None and not (
            isinstance(discounts, list) and len(discounts) == n_blocks
            and all(isinstance(d, list) and len(d) == 3 and all(map(_is_number, d))
                    for d in discounts)):
        problems.append(f"weights.discounts {str(discounts)[:40]} is not three numbers per "
                        "weight block")
    return problems


def _weights_problems(meta: dict) -> list[str]:
    weights = meta.get("weights")
    if weights is None:
        return []
    names = [weights.get("id")] if isinstance(weights, dict) else [None]
    blocks = weights.get("blocks") if isinstance(weights, dict) else None
    if isinstance(blocks, list) and all(isinstance(keys, list) for keys in blocks):
        names += [key for keys in blocks for key in keys]
    else:
        names.append(None)
    if not all(isinstance(name, str) and _NAME.fullmatch(name) for name in names):
        return ["weights.id / weights.blocks are not alphanumeric names"]
    config = meta["config"]
    n_blocks = n_weight_blocks(config)
    problems = []
    if weights.get("kind") == REFINED:
        if blocks != [] or weights.get("layout") not in ("dense", "factored") or \
                weights.get("n_blocks") != n_blocks:
            problems.append(f"weights of kind refined need blocks [], layout dense or "
                            f"factored and n_blocks {n_blocks}")
    elif "kind" in weights:
        problems.append(f"weights.kind {weights['kind']!r} is not {REFINED!r}")
    else:
        rows = len(row_blocks(config["vocab_size"], meta["rows_per_block"]))
        if len(blocks) != n_blocks or any(len(keys) != rows for keys in blocks):
            problems.append(f"weights.blocks is not {n_blocks} list(s) of {rows} row block "
                            "key(s)")
        if weights.get("form") not in ("row", "column"):
            problems.append(f"weights.form {weights.get('form')!r} is not 'row' or 'column'")
        if weights.get("smoothing") not in _SMOOTHINGS:
            problems.append(f"weights.smoothing {weights.get('smoothing')!r} is not one of "
                            f"{', '.join(_SMOOTHINGS)}")
        problems += _strength_problems(weights, n_blocks)
        problems += _calibration_problems(weights.get("calibration"), n_blocks)
    if not isinstance(weights.get("digests", False), bool):
        problems.append("weights.digests is not true or false")
    if not isinstance(weights.get("counts_id"), str):
        problems.append("weights.counts_id is not a name")
    if "written" in weights and not is_timestamp(weights["written"]):
        problems.append(f"weights.written {str(weights['written'])[:40]!r} is not an ISO "
                        "8601 time")
    return problems


def _retired_problems(meta: dict) -> list[str]:
    retired = meta.get("retired", {})
    if not isinstance(retired, dict):
        return ["retired is not an object of paths and times"]
    bad_paths = [path for path in retired if not _RETIRABLE.fullmatch(path)]
    bad_times = [path for path, stamp in retired.items() if not is_timestamp(stamp)]
    problems = []
    if bad_paths:
        problems.append(f"retired names {', '.join(map(repr, bad_paths[:3]))}, which is not a "
                        "counts generation, weights version or weight block")
    if bad_times:
        problems.append(f"retired time of {', '.join(bad_times[:3])} "
                        f"({str(retired[bad_times[0]])[:40]!r}) is not an ISO 8601 time with "
                        "a UTC offset")
    return problems


def _manifest_problems(meta: dict) -> list[str]:
    problems = []
    shards = meta.get("shards", [])
    if not (isinstance(shards, list) and all(
            isinstance(s, dict) and isinstance(s.get("path"), str)
            and (s.get("sha256") is None or (isinstance(s["sha256"], str)
                                             and _SHA256.fullmatch(s["sha256"])))
            and all(s.get(k) is None or _is_int(s[k], 0) for k in ("bytes", "tokens"))
            for s in shards)):
        problems.append("shards is not a list of entries (path, sha256 digest, bytes and "
                        "tokens >= 0)")
    totals = meta.get("totals", {})
    if not (isinstance(totals, dict) and all(_is_int(v, 0) for v in totals.values())):
        problems.append("totals is not an object of integers >= 0")
    read = meta.get("read_options", {})
    if not (isinstance(read, dict)
            and all(isinstance(read.get(k, ""), str) for k in ("documents", "text_field"))
            and (read.get("max_line_bytes") is None or _is_int(read["max_line_bytes"], 1))):
        problems.append("read_options is not an object (documents, text_field: text; "
                        "max_line_bytes: an integer >= 1)")
    versions = meta.get("versions", {})
    if not (isinstance(versions, dict)
            and all(v is None or isinstance(v, str) for v in versions.values())):
        problems.append("versions is not an object of version strings")
    if "created" in meta and not is_timestamp(meta["created"]):
        problems.append(f"created {str(meta['created'])[:40]!r} is not an ISO 8601 time")
    return problems


def _calibration_source_problems(meta: dict) -> list[str]:
    source = meta.get("calibration_source")
    if source is None:
        return []
    if isinstance(source, dict) and source.get("kind") == "files":
        ok = isinstance(source.get("paths"), list) and all(
            isinstance(p, str) for p in source["paths"])
    elif isinstance(source, dict) and source.get("kind") == "heldout":
        fraction = source.get("fraction")
        ok = (_is_number(fraction) and 0 < fraction <= 1
              and all(_is_int(source.get(k), 1) for k in ("group_lines", "group_bytes"))
              and (source.get("max_tokens_per_shard") is None
                   or _is_int(source["max_tokens_per_shard"], 0))
              and isinstance(source.get("shards"), list)
              and all(isinstance(p, str) for p in source["shards"]))
    else:
        ok = False
    return [] if ok else ["calibration_source is not a list of files or a recorded hold-out"]


def _history_problems(meta: dict) -> list[str]:
    history = meta.get("history", [])
    if not (isinstance(history, list)
            and all(isinstance(event, dict) and isinstance(event.get("event"), str)
                    for event in history)):
        return ["history is not a list of events (objects with an 'event' name)"]
    return []


def validate_meta(meta: dict, url: str):
    """Check a store's attributes for type and range before anything is read by them.

    Raises
    ------
    StoreConfigError
        One line naming the store, every bad attribute, and the fix.
    """
    version = meta.get("format_version")
    if not _is_int(version, 1):
        problems = [f"format_version {version!r} is not an integer >= 1"]
    elif version > FORMAT_VERSION:
        raise StoreConfigError(f"store {url} has format_version {version}, newer than this "
                               f"streamsolve reads (up to {FORMAT_VERSION}): upgrade streamsolve")
    else:
        problems = _config_problems(meta)
        if not problems:
            problems = (_counts_problems(meta) + _weights_problems(meta)
                        + _retired_problems(meta) + _manifest_problems(meta)
                        + _calibration_source_problems(meta) + _history_problems(meta))
    if problems:
        raise StoreConfigError(f"store {url} has invalid attributes (hand-edited or damaged "
                               f"zarr.json): {'; '.join(problems)}. Restore zarr.json or "
                               "rebuild the store.")
