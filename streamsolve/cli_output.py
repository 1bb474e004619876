"""Human output of the command line: the `solve` summary, `info` with its history, and the rest."""

from __future__ import annotations

import json


def print_human(command: str, result: dict):
    """Print a command's result for a person (``--json`` prints the dict instead)."""
    if command == "solve":
        lines = [
            "streamsolve solve — summary",
            f"  store                 {result['store']}",
            f"  tokens counted        {result['new_tokens']:,}",
            f"  distinct pairs        {', '.join(f'{n:,}' for n in result['distinct_pairs'])} (per block)",
            f"  seconds               {result['seconds']} (count {result['count_seconds']}, "
            f"finalize {result['finalize_seconds']}, eval {result.get('eval_seconds')})",
            f"  tokens/s (counting)   {result['tokens_per_second']:,}",
        ]
        if result.get("heldout"):
            lines.append(f"  held out              {result['heldout']}: "
                         f"{result['heldout_documents']:,} pieces, {result['heldout_bytes']:,} bytes")
        if "heldout_perplexity" in result:
            lines += [
                f"  held-out tokens       {result['heldout_tokens']:,}",
                f"  held-out perplexity   {result['heldout_perplexity']} raw "
                f"({result['heldout_cross_entropy']} nats/token, {result['heldout_bits_per_byte']} bits/byte)",
            ]
            if result.get("calibration"):  # none with --no-calibrate (or when it did not help)
                lines.append(f"  calibrated            {result['calibrated_perplexity']} "
                             f"({result['calibrated_cross_entropy']} nats/token)")
        if result.get("invalid_bytes"):
            lines.append(f"  invalid UTF-8 bytes   {result['invalid_bytes']:,} (replaced)")
        if result.get("split_lines"):
            lines.append(f"  long lines cut        {result['split_lines']:,} (see --memory)")
        if result.get("skipped_shards"):
            lines.append(f"  skipped shards        {', '.join(result['skipped_shards'])}")
        if result.get("sample") is not None:
            lines.append(f"  sample ('The ' ...)   {result['sample']!r}")
        print("\n".join(lines))
    elif command == "cluster-script":
        print(result["job_script"])
    elif command == "info":
        print_info(result)
    elif command == "score":
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


#: How many of the latest provenance events `streamsolve info` prints (``--json``: all).
INFO_HISTORY_EVENTS = 5


def describe_event(event: dict) -> str:
    """One line for a provenance event of a store's history."""
    name, when = event.get("event", "?"), event.get("time", "?")
    if name == "ingest":
        shards = event.get("shards", [])
        detail = (f"generation {event.get('generation')}: {len(shards)} shard(s) added, "
                  f"{event.get('tokens', 0):,} tokens in the store")
    elif name == "finalized":
        params = event.get("parameters", {})
        detail = (f"weights {event.get('weights_id')}: {params.get('form')} form, "
                  f"{params.get('smoothing')} (mu {params.get('mu')}, alpha "
                  f"{params.get('alpha')}"
                  + (f", discounts {params['discounts']}" if params.get("discounts") else "")
                  + f"), {event.get('reused_blocks')} row block(s) reused")
    elif name == "calibrated":
        detail = (f"weights {event.get('weights_id')}: beta {event.get('beta')}, gamma "
                  f"{event.get('gamma')}, held-out CE {event.get('cross_entropy_before')} -> "
                  f"{event.get('cross_entropy_after')} on {event.get('heldout_tokens')} tokens")
    elif name == "created":
        config = event.get("config", {})
        detail = (f"V={config.get('vocab_size')}, radius {config.get('radius')}, "
                  f"{config.get('aggregation')}; streamsolve "
                  f"{event.get('versions', {}).get('streamsolve')}")
    else:
        detail = ""
    return f"{when}  {name:<10} {detail}".rstrip()


def describe_smoothing(values: dict | None) -> str:
    """One line for `api.smoothing_values` (``info``'s ``smoothing``)."""
    if not values:
        return "None (not finalized)"
    parts = [f"{values.get('smoothing')} ({values.get('form')} form)"]
    for k in ("mu", "alpha"):
        if isinstance(values.get(k), dict):
            parts.append(f"{k} " + ", ".join(f"{label} {v:g}" for label, v in values[k].items()))
        elif values.get(k) is not None:
            parts.append(f"{k} {values[k]:g}")
    if values.get("discounts"):
        parts.append("discounts D1/D2/D3+ " + ", ".join(
            f"{label} {'/'.join(f'{d:.4f}' for d in ds)}"
            for label, ds in values["discounts"].items()))
    if values.get("search"):
        parts.append(f"chosen on {values['search']['positions']} held-out positions: " + ", ".join(
            f"{label} s={b['scale']:.3g} (CE {b['default_cross_entropy']:.4f} -> "
            f"{b['cross_entropy']:.4f})" for label, b in values["search"]["blocks"].items()))
    return ", ".join(parts)


def print_info(result: dict):
    """``streamsolve info`` for a person: the fields, the smoothing and the latest history."""
    history = result.get("history", [])
    for key, value in result.items():
        if key == "smoothing":
            print(f"smoothing: {describe_smoothing(value)}")
        elif key != "history":
            print(f"{key}: {value}")
    shown = history[-INFO_HISTORY_EVENTS:]
    print(f"history: {len(history)} event(s)"
          + (f", the last {len(shown)}:" if len(shown) < len(history) else
             (":" if history else " (a store older than the history)")))
    for event in shown:
        print(f"  {describe_event(event)}")
