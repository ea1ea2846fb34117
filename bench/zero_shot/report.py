"""The Markdown table and the fidelity-against-FLOPs plot of :func:`run_experiment`'s result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .experiment import label

__all__ = ["plot", "write_table"]


def write_table(result: dict[str, Any], path: Path) -> str:
    """The Markdown table of :func:`run_experiment`'s rows; written to ``path`` and returned."""
    num_layers = result.get("num_layers", 6)
    head = (
        f"# Zero-shot HSA in {result['model']}\n\n"
        f"{result['num_pairs']} query/document pairs ({result['num_texts']} texts, "
        f"{result['tokens_mean']:.1f} tokens on average, at most {result['tokens_max']}) from "
        f"{result['corpus']}; Python {result['python']}, torch {result['torch']}, HSA backend "
        f"`{result['backend']}`, torch threads: {result.get('threads', '?')}, "
        f"{result.get('seconds', 0):.0f} s in all ({result.get('cpu_seconds', 0):.0f} s of CPU "
        "time). Unmodified model: retrieval "
        f"top-1 {result['baseline']['top1']:.4f}, MRR {result['baseline']['mrr']:.4f}.\n\n"
        "FLOPs saved: attention FLOPs against dense attention (4 d n^2 per layer and head), in "
        f"the replaced layers and over all {num_layers} layers; HSA counted as "
        "4 d (n + sum_f b_f (b_f-1)), "
        "the last FLOP column adds the node means of q, k, v. cos: cosine similarity of each "
        "embedding to the unmodified model's. rho: Spearman correlation of all pairwise "
        "similarities with the unmodified model's. top-1, MRR: each paragraph's first half "
        "retrieves its second half among all second halves (top-1 accuracy, mean reciprocal "
        "rank).\n"
    )
    lines = [
        "| hierarchy | replaced layers | saved (replaced) | saved (all) | saved (all, +means) "
        "| cos mean | cos min | rho | top-1 | MRR |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| none | {label((), num_layers)} | 0.0% | 0.0% | 0.0% | 1.0000 | 1.0000 | 1.0000 | "
        f"{result['baseline']['top1']:.4f} | {result['baseline']['mrr']:.4f} |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['hierarchy']} | {label(r['layers'], num_layers)} | {r['saved_replaced']:.1%} | "
            f"{r['saved_model']:.1%} | {r['saved_model_with_means']:.1%} | {r['cos_mean']:.4f} | "
            f"{r['cos_min']:.4f} | {r['spearman']:.4f} | {r['top1']:.4f} | {r['mrr']:.4f} |"
        )
    text = head + "\n" + "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def plot(result: dict[str, Any], path: Path) -> None:
    """Fidelity (Spearman, retrieval MRR) against FLOPs saved: a line per hierarchy.

    Each point of a line is a circle with its ``k`` written inside, so labels sit on their points
    and need no placement.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_layers = result.get("num_layers", 6)
    rows = [r for r in result["rows"] if r["hierarchy"] != "flat"]
    kinds = list(dict.fromkeys(r["hierarchy"] for r in rows))
    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), constrained_layout=True)
    panels = [
        ("spearman", "Spearman rho of pairwise similarities\nvs. unmodified model"),
        ("mrr", "retrieval: mean reciprocal rank"),
    ]
    for ax, (metric, ylabel) in zip(axes, panels, strict=True):
        for c, kind in enumerate(kinds):
            sweep = sorted(
                (r for r in rows if r["hierarchy"] == kind and r["k"] is not None),
                key=lambda r: r["k"],
            )
            alt = [r for r in rows if r["hierarchy"] == kind and r["k"] is None]
            xs = [100 * r["saved_model"] for r in sweep]
            ys = [r[metric] for r in sweep]
            # Each series' digits sit just above its own circles and below the next series'
            # circles, so where two points coincide the upper one stays legible.
            z = 3 + c
            ax.plot(xs, ys, "o-", color=colors(c), lw=1.2, ms=11, mfc="white", label=kind, zorder=z)
            for x, y, r in zip(xs, ys, sweep, strict=True):
                ax.annotate(
                    str(r["k"]),
                    (x, y),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colors(c),
                    zorder=z + 0.5,
                )
            alt_xy = [(100 * r["saved_model"], r[metric]) for r in alt]
            ax.plot(
                [x for x, _ in alt_xy],
                [y for _, y in alt_xy],
                "D",
                mfc="none",
                mew=1.0,
                color=colors(c),
                ms=8,
                ls="none",
                zorder=2.5,
            )
        if metric == "mrr":
            ax.axhline(
                result["baseline"]["mrr"], color="0.4", ls="--", lw=1, label="unmodified model"
            )
        ax.set_xscale("log")
        ticks = [2, 5, 10, 20, 50, 100]
        ax.set_xticks(ticks, [f"{t}%" for t in ticks])
        ax.set_xticks([], minor=True)
        ax.set_xlim(left=min(1.5, *(100 * r["saved_model"] * 0.8 for r in rows)), right=100)
        ax.margins(y=0.08)
        ax.set_xlabel(f"attention FLOPs saved over all {num_layers} layers (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, names = axes[1].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], marker="D", mfc="none", ms=8, color="0.3", ls="none"))
    names.append("alternating layers\n(1,3,5 and 3,5)")
    fig.legend(handles, names, loc="outside right center", title="hierarchy")
    fig.suptitle(
        f"Zero-shot HSA in {result['model']}: numbers are k (layers k..{num_layers - 1} "
        "replaced by HSA)"
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)
