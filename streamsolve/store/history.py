"""Provenance as history: the append-only list of events in a store's attributes.

``attrs["history"]`` is a list of events, oldest first; each is a JSON object with an
``event`` name and a ``time``:

- ``created``: versions of the libraries, the count configuration, the tokenizer hash;
- ``ingest``: the counts generation committed, versions, the shards added (path, sha256,
  bytes, tokens) and the totals after it;
- ``finalized``: the weights version, its parameters (form, smoothing, mu, alpha) and how
  many weight row blocks were reused;
- ``calibrated``: the weights version, the scalars (beta, gamma), the held-out tokens and
  the cross-entropy before and after;
- ``refined``: a weights version written by ``streamsolve refine`` (layout, rank, init,
  optimizer, lr, steps, tokens, held-out CE at the start and best, the version it started
  from; the full held-out curve is in the version's attributes).

An event is appended in the same attribute write as the commit it describes (so a crash
never leaves one without the other) and earlier events are never rewritten. Stores written
before the history existed open with an empty one.
"""

from __future__ import annotations

from ..versions import library_versions
from .layout import utc_now

#: The keys of a shard's manifest entry that its ingest event repeats.
SHARD_FIELDS = ("path", "sha256", "bytes", "tokens")


def history_of(meta: dict) -> list[dict]:
    """The events of a store's attributes, oldest first (empty for an older store)."""
    return list(meta.get("history", []))


def with_event(meta: dict, event: dict) -> dict:
    """A copy of ``meta`` with ``event`` appended to its history (``meta`` is unchanged)."""
    return {**meta, "history": history_of(meta) + [event]}


def created_event(config: dict, tokenizer: dict) -> dict:
    """The event of a store's creation."""
    return {"event": "created", "time": utc_now(), "versions": library_versions(),
            "config": dict(config), "tokenizer": dict(tokenizer)}


def ingest_event(generation: int, shards: list[dict], totals: dict, tokens: int,
                 nnz: list[int]) -> dict:
    """The event of a committed counts generation: the shards it added and the totals after."""
    return {"event": "ingest", "time": utc_now(), "generation": int(generation),
            "versions": library_versions(),
            "shards": [{name: shard.get(name) for name in SHARD_FIELDS} for shard in shards],
            "totals": dict(totals), "tokens": int(tokens), "nnz": [int(n) for n in nnz]}


def finalized_event(weights_id: str, counts_id: str, params: dict,
                    reused_blocks: int | None = None) -> dict:
    """The event of a weights commit: its parameters and the reused row blocks."""
    parameters = {name: params.get(name) for name in ("form", "smoothing", "mu", "alpha")}
    return {"event": "finalized", "time": utc_now(), "weights_id": weights_id,
            "counts_id": counts_id, "versions": library_versions(),
            "parameters": parameters, "reused_blocks": reused_blocks}


def calibrated_event(weights_id: str, calibration: dict) -> dict:
    """The event of calibration scalars recorded on a weights version."""
    return {"event": "calibrated", "time": utc_now(), "weights_id": weights_id,
            "beta": calibration.get("beta"), "gamma": calibration.get("gamma"),
            "heldout_tokens": calibration.get("heldout_tokens"),
            "cross_entropy_before": calibration.get("raw_cross_entropy"),
            "cross_entropy_after": calibration.get("calibrated_cross_entropy")}
