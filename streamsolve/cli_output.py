"""Human output of the command line: the `solve` summary, `info` with its history, and the
rest; and the records and text that `score` and `generate` stream to stdout."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable


def write_records(records: Iterable[dict]) -> dict | None:
    """Write records as JSON lines to stdout as they come, up to the summary record, which
    is returned (the caller prints it last)."""
    summary = None
    for record in records:
        if record.get("summary"):
            summary = record
            break
        sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return summary


def write_pieces(pieces: Iterable[str]):
    """Write text to stdout piece by piece as it is generated, then a newline."""
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def print_human(command: str, result: dict):
    """Print a command's result for a person (``--json`` prints the dict instead)."""
    if command == "solve":
        print("streamsolve solve — summary")
        print(format_table(solve_rows(result), indent="  "))
    elif command == "cluster-script":
        print(result["job_script"])
    elif command == "info":
        print_info(result)
    elif command == "score":
        print(json.dumps(result))
    elif command == "train":  # issue 25
        from .network.command import Result

        print("\n".join(Result(**result).lines()))
    elif command == "refine":
        print(f"refined weights {result['weights_id']} of {result['store']}: held-out CE "
              f"{result['start_ce']:.5f} -> {result['best_ce']:.5f} nats/token (best at step "
              f"{result['best_step']} of {result['steps']}, {result['tokens']:,} tokens, "
              f"{result['init']} init, {result['optimizer']}, {result.get('updates', 'dense')} "
              f"updates, stopped: {result['stopped']})")
    else:
        print(format_table([(_label(key, value), format_value(value))
                            for key, value in result.items()]))


def solve_rows(result: dict) -> list[tuple[str, str]]:
    """The rows of ``solve``'s summary (`format_table`)."""
    rows = [
        ("store", result["store"]),
        ("tokens counted", f"{result['new_tokens']:,}"),
        (pairs_label(result["distinct_pairs"]), format_value(result["distinct_pairs"])),
        ("seconds", f"{result['seconds']} (count {result['count_seconds']}, finalize "
                    f"{result['finalize_seconds']}, eval {result.get('eval_seconds')})"),
        ("tokens/s (counting)", f"{result['tokens_per_second']:,}"),
    ]
    if result.get("heldout"):
        rows.append(("held out", f"{result['heldout']}: {result['heldout_documents']:,} "
                                 f"pieces, {result['heldout_bytes']:,} bytes"))
    if "heldout_perplexity" in result:
        rows += [
            ("held-out tokens", f"{result['heldout_tokens']:,}"),
            ("held-out perplexity", f"{result['heldout_perplexity']} raw "
                                    f"({result['heldout_cross_entropy']} nats/token, "
                                    f"{result['heldout_bits_per_byte']} bits/byte)"),
        ]
        if result.get("calibration"):  # none with --no-calibrate (or when it did not help)
            rows.append(("calibrated", f"{result['calibrated_perplexity']} "
                                       f"({result['calibrated_cross_entropy']} nats/token)"))
    if result.get("invalid_bytes"):
        rows.append(("invalid UTF-8 bytes", f"{result['invalid_bytes']:,} (replaced)"))
    if result.get("split_lines"):
        rows.append(("long lines cut", f"{result['split_lines']:,} (see --memory)"))
    if result.get("skipped_shards"):
        rows.append(("skipped shards", ", ".join(result["skipped_shards"])))
    if result.get("sample") is not None:
        rows.append(("sample ('The ' ...)", repr(result["sample"])))
    return rows


def pairs_label(pairs) -> str:
    """Label of the distinct pairs per count block: one block per offset when there are
    several (``cat``); a single block is the one offset, or the offsets summed (``sum``)."""
    return "distinct pairs (per offset)" if len(pairs) > 1 else "distinct pairs"


def _label(key: str, value) -> str:
    """A field's label for a person: words, not the JSON key."""
    if key in ("distinct_pairs", "nnz"):
        return pairs_label(value) if isinstance(value, list) else "distinct pairs"
    return key.replace("_", " ")


def format_value(value) -> str:
    """One field's value for a person: thousands separators, lists and mappings as words."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {format_value(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, (list, tuple)) for v in value):
            return "; ".join(format_value(v) for v in value)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return (" / " if numbers else ", ").join(format_value(v) for v in value) or "-"
    return str(value)


def format_table(rows: list[tuple[str, str]], indent: str = "") -> str:
    """Rows of ``(label, text)`` as two aligned columns."""
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{indent}{label:<{width}}  {text}".rstrip() for label, text in rows)


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
    elif name == "refined":
        detail = (f"weights {event.get('weights_id')} ({event.get('layout')}"
                  + (f", rank {event['rank']}" if event.get("rank") else "")
                  + f") from {event.get('from_weights')}: {event.get('init')} init, "
                  f"{event.get('optimizer')} lr {event.get('lr')}"
                  + (f" ({event['updates']})" if event.get("updates") else "")
                  + f", {event.get('steps')} steps, "
                  f"held-out CE {event.get('start_ce')} -> {event.get('best_ce')}")
    elif name == "created":
        config = event.get("config", {})
        detail = (f"V={config.get('vocab_size')}, radius {config.get('radius')}, "
                  f"{config.get('aggregation')}; streamsolve "
                  f"{event.get('versions', {}).get('streamsolve')}")
    else:
        detail = ""
    return f"{when}  {name:<10} {detail}".rstrip()


def describe_refined(provenance: dict) -> str:
    """One line for refined weights' provenance, the held-out curve summarised (first,
    best, last CE and the number of points; ``--json`` keeps the whole curve)."""
    parts = [f"{provenance.get('init')} init, {provenance.get('optimizer')} lr "
             f"{provenance.get('lr')}, {provenance.get('updates', 'dense')} updates, "
             f"{format_value(provenance.get('steps'))} steps, "
             f"{format_value(provenance.get('tokens'))} tokens, stopped: "
             f"{provenance.get('stopped')}"]
    curve = provenance.get("curve") or []
    if curve:
        best = min(curve, key=lambda point: point[3])
        parts.append(f"held-out CE first {curve[0][3]:.5f}, best {best[3]:.5f} (step "
                     f"{best[0]}), last {curve[-1][3]:.5f} ({len(curve)} points on "
                     f"{format_value(provenance.get('heldout_tokens'))} tokens)")
    return "; ".join(parts)


def describe_smoothing(values: dict | None) -> str:
    """One line for `core.smoothing.smoothing_values` (``info``'s ``smoothing``)."""
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
    rows = []
    for key, value in result.items():
        if key == "smoothing":
            rows.append(("smoothing", describe_smoothing(value)))
        elif key == "weights" and isinstance(value, dict):  # the rest is in smoothing
            rows.append(("weights", format_value({k: value.get(k) for k in (
                "id", "written", "calibration", "stale") if k in value})))
            if isinstance(value.get("refined"), dict):
                rows.append(("refined", describe_refined(value["refined"])))
        elif key != "history":
            rows.append((_label(key, value), format_value(value)))
    print(format_table(rows))
    shown = history[-INFO_HISTORY_EVENTS:]
    print(f"history: {len(history)} event(s)"
          + (f", the last {len(shown)}:" if len(shown) < len(history) else
             (":" if history else " (a store older than the history)")))
    for event in shown:
        print(f"  {describe_event(event)}")
