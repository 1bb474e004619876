"""PNG plots (matplotlib, optional) and the Markdown REPORT section of the pipeline."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib absent: no plots (pip install matplotlib)")
        return None
    return plt


def plots(results: dict, out: Path) -> list[str]:
    """Write the PNGs of every item present in ``results``; returns their file names."""
    plt = _pyplot()
    if plt is None:
        return []
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    for cfg in results.get("1", []):
        tag = f"V{cfg['vocab_size']}-R{cfg['radius']}"
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label in (("random_adam", "Adam, random init (tuned)"),
                           ("warm_adam", "Adam, explicit warm start"),
                           ("warm_lbfgs", "L-BFGS, explicit warm start")):
            curve = cfg[key]["curve"]
            ax.plot([p["seconds"] for p in curve], [p["ce"] for p in curve], marker=".",
                    label=label)
        ax.axhline(cfg["explicit"]["ce"], color="grey", ls="--", label="explicit")
        ax.axhline(cfg["explicit_calibrated"]["ce"], color="black", ls=":",
                   label="explicit + calibration")
        ax.set(xlabel="training seconds", ylabel="held-out CE (nats)",
               title=f"{tag} ({cfg['model']})")
        finite = [p["ce"] for k in ("warm_adam", "warm_lbfgs") for p in cfg[k]["curve"]]
        ax.set_ylim(min(finite + [cfg["explicit_calibrated"]["ce"]]) - 0.2,
                    max(cfg["explicit"]["ce"], cfg["random_adam"]["best_ce"]) + 1.0)
        ax.legend(fontsize=8)
        save(fig, f"item1-{tag}.png")
        curve = cfg["random_adam"]["curve"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([p["seconds"] for p in curve], [p["kl"] for p in curve], marker=".",
                label="KL(explicit || iterate), held-out contexts")
        if curve and curve[0].get("rel_l2") is not None:
            ax2 = ax.twinx()
            ax2.plot([p["seconds"] for p in curve], [p["rel_l2"] for p in curve], color="C1",
                     marker=".", label="relative L2, centred weights")
            ax2.set_ylabel("relative L2")
            ax2.legend(loc="upper center", fontsize=8)
        ax.set(xlabel="training seconds", ylabel="KL (nats)",
               title=f"{tag}: random-init Adam vs the explicit solution")
        ax.legend(fontsize=8)
        save(fig, f"item2-{tag}.png")
    if "3" in results:
        r = results["3"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in ("warm", "random"):
            curve = r[key]["curve"]
            ax.plot(range(len(curve)), [p["ce"] for p in curve], marker="o",
                    label=f"{key} start (lr {r[key]['lr']:g})")
        ax.axhline(r["layer1_ce"], color="grey", ls="--", label="layer 1 alone (explicit)")
        ax.set(xlabel="epoch", ylabel="held-out CE (nats)",
               title=f"two layers, V={r['vocab_size']} R={r['radius']}")
        ax.legend(fontsize=8)
        save(fig, "item3-two-layers.png")
    if "4" in results and results["4"]["rows"]:
        r = results["4"]
        d = [row["rank"] for row in r["rows"]]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(d, [row["warm_ce"] for row in r["rows"]], marker="o", label="rank-d warm start")
        ax.plot(d, [row["adam_ce"] for row in r["rows"]], marker="s",
                label="after a short Adam run")
        ax.axhline(r["full_explicit_ce"], color="black", ls=":", label="full explicit")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="rank d", ylabel="held-out CE (nats)",
               title=f"low rank, V={r['vocab_size']} R={r['radius']}")
        ax.legend(fontsize=8)
        save(fig, "item4-low-rank.png")
    for name, r in results.get("5", {}).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in r["starts"]:
            gap = [max(v / r["logreg_objective"] - 1, 1e-7) for v in row["curve"]]
            ax.plot(gap, label=row["start"])
        ax.axhline(1e-4, color="grey", ls="--")
        ax.set_yscale("log")
        ax.set(xlabel="refine pass", ylabel="objective / LogisticRegression - 1",
               title=f"{name}: refine from each start")
        ax.legend(fontsize=7)
        save(fig, f"item5-{name}.png")
    return written


def _f(x, digits=4):
    return "—" if x is None else f"{x:.{digits}f}"


def _why_not(r: dict) -> str:
    """One sentence on why the explicit start did not reach the objective in fewer passes."""
    zeros = next(x for x in r["starts"] if x["init"] == "zeros")
    explicit = [x for x in r["starts"] if x["init"] == "explicit"]
    best = min(explicit, key=lambda x: (x["passes_to_reach"] is None,
                                        x["passes_to_reach"] or 0, x["objective_end"]))
    passes = len(zeros["curve"]) - 1
    if zeros["passes_to_reach"] is None and best["passes_to_reach"] is None:
        return (f"neither reaches 1e-4 within {passes} passes; after them zeros is at "
                f"{zeros['objective_end']:.5f}, {best['start']} at {best['objective_end']:.5f}")
    needed = best["passes_to_reach"] if best["passes_to_reach"] is not None else f"> {passes}"
    return (f"its best, {best['start']}, starts at objective {best['objective_start']:.4f} "
            f"(zeros: {zeros['objective_start']:.4f}) yet needs {needed} passes against "
            f"{zeros['passes_to_reach']} from zeros: a lower first objective does not shorten "
            "L-BFGS's run to 1e-4 here")


def _margin(r: dict) -> str:
    """How much the best explicit start saves over zeros, in passes and percent."""
    passes = {row["start"]: row["passes_to_reach"] for row in r["starts"]}
    zeros = passes.get("zeros")
    explicit = [v for k, v in passes.items() if k != "zeros" and v is not None]
    if zeros is None or not explicit:
        return "zeros did not reach it"
    best = min(explicit)
    saved = 100 * (zeros - best) / zeros
    return f"best explicit start {best} passes vs {zeros} from zeros, {saved:.0f}% fewer"


def markdown(results: dict, command: str, machine: str, pngs: list[str]) -> str:
    """The REPORT section (pasted into BENCHMARKS.md by the lead)."""
    lines = ["## REPORT: the paper's claims measured (issue 15)", "",
             f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Profile: {results['profile']}; wall {results['wall_seconds']:.0f} s. "
             "CE in nats per token on the held-out source; training clocks count steps only.", ""]
    d = results.get("data")
    if d:
        lines += [
            f"- Held out by source: train on {', '.join(d['train_sources'])}; calibrate on the "
            f"first {d['calibration_bytes'] >> 10} KiB of {d['calibration_source']}; every arm "
            f"is evaluated on the same first {d['test_tokens']:,} tokens of {d['test_source']}.",
            "- explicit = `streamsolve.api.count` + `finalize` (default smoothing, `cat`); "
            "+ calibration adds `finalize(calibrate=...)` (its seconds include finalize's "
            "scoring of the calibration file).",
            f"- Adam: PyTorch, float32, batch {d['batch']}: row-sparse lazy Adam on dense tables "
            "(`streamsolve.refine`, decoupled decay on the touched rows), AdamW on factored "
            "modules; the same module as the warm start (`streamsolve.torch.load`), random init N(0, 0.01); lr "
            f"{list(d['lrs'])} x weight decay {list(d['weight_decays'])} tuned on short runs "
            f"(best held-out CE), then the budget with early stopping (patience "
            f"{d['patience']} evaluations). Warm Adam: lr {list(d['warm_lrs'])} tuned alike.",
            f"- L-BFGS: torch LBFGS (strong Wolfe, history 10) full-batch on a fixed random "
            f"subsample of {d['lbfgs_positions']:,} training positions (a full pass does not fit "
            "a step); it over-fits that subsample when it has far fewer positions than weights.",
            "- Models where R V^2 float32 exceeds the profile's dense budget use the factored "
            "rank-d module (`streamsolve.torch.load(rank=d)`) for every arm: its warm start is "
            "the rank-d truncation, not the full explicit model.", ""]
    if "1" in results:
        lines += ["### 1. Explicit vs backpropagation (held-out CE; seconds)", "",
                  "| V | R | model | train tokens | explicit | + calibration | random Adam best "
                  "(lr, wd) | reach explicit CE | warm Adam best | warm L-BFGS best | "
                  "warm better? |", "|" + "---|" * 11]
        for c in results["1"]:
            ra = c["random_adam"]
            reach = (f"{ra['reach_seconds']:.1f} s ({ra['reach_ratio']:.1f}x)"
                     if ra["reach_seconds"] is not None else
                     f"not reached within {ra['seconds']:.0f} s (> {ra['budget_ratio']:.0f}x "
                     "incl. tuning)")
            lines.append(
                f"| {c['vocab_size']} | {c['radius']} | {c['model']} | {c['train_tokens']:,} | "
                f"{_f(c['explicit']['ce'])} ({c['explicit']['seconds']:.1f} s) | "
                f"{_f(c['explicit_calibrated']['ce'])} "
                f"({c['explicit_calibrated']['seconds']:.1f} s) | {_f(ra['best_ce'])} "
                f"({ra['lr']:g}, {ra['weight_decay']:g}) | {reach} | "
                f"{_f(c['warm_adam']['best_ce'])} (from {_f(c['warm_start_ce'])}) | "
                f"{_f(c['warm_lbfgs']['best_ce'])} | "
                f"{'yes' if c['claim3_warm_better'] else 'no'} |")
        lines += [""] + [f"- V={c['vocab_size']} R={c['radius']}: {c['claim3_compute_note']}"
                         for c in results["1"]]
        better = [c["claim3_warm_better"] for c in results["1"]]
        lines += ["", "**Claim 3 (warm start ends better than random init at equal or greater "
                  "compute): " + ("holds in every configuration" if all(better) else
                                  f"holds in {sum(better)} of {len(better)} configurations")
                  + ".** Random-init Adam got its budget plus its tuning runs.", ""]
        lines += ["### 2. Distance of the random-init iterate to the explicit solution", "",
                  "| V | R | KL first | KL min | KL last | rel. L2 first | rel. L2 last | falls? |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in results["1"]:
            d = c["claim2"]
            falls = "KL " + ("yes" if d["kl_falls"] else "no") + (
                " (then rises again)" if d.get("kl_rises_after_min") else "")
            if d["rel_l2_falls"] is not None:
                falls += ", L2 " + ("yes" if d["rel_l2_falls"] else "no")
            lines.append(f"| {c['vocab_size']} | {c['radius']} | {_f(d['kl_first'])} | "
                         f"{_f(d['kl_min'])} | {_f(d['kl_last'])} | {_f(d['rel_l2_first'])} | "
                         f"{_f(d['rel_l2_last'])} | {falls} |")
        lines += ["", "Relative L2 is of the minimum-norm (double-centred) weights, dense models "
                  "only; KL(explicit || iterate) is averaged over held-out contexts.", ""]
    if "3" in results:
        r = results["3"]
        lines += [f"### 3. Two layers (V = {r['vocab_size']}, R = {r['radius']}, "
                  f"{r['positions']:,} positions, {r['epochs']} epochs each)", "",
                  f"Layer 1 alone (explicit LM): {_f(r['layer1_ce'])}; explicit two-layer "
                  f"(layer 2 solved explicitly on layer 1's softmax outputs, "
                  f"{r['solve_seconds']:.1f} s): {_f(r['explicit_two_layer_ce'])}.", "",
                  "| start | best held-out CE | lr (grid best) | seconds |", "|---|---|---|---|"]
        for key in ("warm", "random"):
            a = r[key]
            lines.append(f"| {key} | {_f(a['best_ce'])} | {a['lr']:g} | {a['seconds']:.1f} |")
        lines += ["", f"**Warm start better after equal epochs: "
                  f"{'yes' if r['warm_better'] else 'no'}.**", ""]
    if "4" in results:
        r = results["4"]
        lines += [f"### 4. Low rank (V = {r['vocab_size']}, R = {r['radius']}; full explicit "
                  f"{_f(r['full_explicit_ce'])})", "",
                  "| d | SVD s | rank-d warm start CE | after Adam (lr, s) |", "|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['rank']} | {row['svd_seconds']:.1f} | {_f(row['warm_ce'])} | "
                         f"{_f(row['adam_ce'])} ({r['lr']:g}, {row['adam_seconds']:.0f} s) |")
        lines.append("")
    if "5" in results:
        lines += ["### 5. Classifiers: refine passes to LogisticRegression's objective "
                  "(C = 1, within 1e-4)", "",
                  "| data | start | objective at start | passes to reach | objective at end |",
                  "|---|---|---|---|---|"]
        for name, r in results["5"].items():
            for row in r["starts"]:
                reached = row["passes_to_reach"]
                lines.append(f"| {name} ({r['samples']} x {r['features']}) | {row['start']} | "
                             f"{row['objective_start']:.4f} | "
                             f"{reached if reached is not None else 'not reached'}"
                             f" | {row['objective_end']:.5f} |")
        lines.append("")
        for name, r in results["5"].items():
            lines.append(f"- {name}: LogisticRegression objective {r['logreg_objective']:.5f}; "
                         f"explicit start wins: {'yes' if r['explicit_wins'] else 'no'}"
                         + (f" ({_margin(r)})" if r["explicit_wins"] else f" — {_why_not(r)}"))
        lines.append("")
    if pngs:
        lines += ["Plots: " + ", ".join(pngs), ""]
    return "\n".join(lines)
