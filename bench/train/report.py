"""The Markdown table and the two figures of :func:`run_experiment`'s result."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .stats import mean_interval

__all__ = ["CAPTIONS", "plot_by_depth", "plot_curves", "write_table"]

CAPTIONS = {
    "curves": "Validation accuracy during training: the line is the mean over seeds, the band "
    "the range from the worst to the best seed. hsa-flat (dashed) is softmax attention computed "
    "by HSA and lies on the softmax line. Dotted: chance (10 balanced classes).",
    "depth": "Test accuracy by nesting depth of the expression: mean over seeds with its 95% "
    "t interval (points of one depth spread sideways to stay apart); n is the number of test "
    "expressions of that depth. hsa-flat (dashed) is softmax attention computed by HSA. "
    "Dotted: chance.",
}


def _interval(mean: float, low: float, high: float, scale: float = 100.0) -> str:
    if math.isnan(low):
        return f"{scale * mean:.1f}"
    return f"{scale * mean:.1f} [{scale * low:.1f}, {scale * high:.1f}]"


def write_table(result: dict[str, Any], path: Path) -> str:
    """The comparison as Markdown: setting, one row per attention, accuracy by depth; written
    to ``path`` and returned."""
    p, data, machine = result["profile"], result["data"], result["machine"]
    d, t = p["data"], p["train"]
    models = result["models"]
    first = next(iter(models.values()))
    cpu_total = (
        f" ({result['cpu_seconds']:.0f} s of CPU time in all processes)"
        if "cpu_seconds" in result
        else ""
    )
    head = (
        "# HSA against softmax attention, trained from scratch on ListOps\n\n"
        f"Profile `{p['name']}`: {data['sizes']['train']:,} training, "
        f"{data['sizes']['validation']:,} validation and {data['sizes']['test']:,} test "
        f"expressions (distinct across splits; depth at most {d['max_depth']}, 2 to "
        f"{d['max_args']} arguments per operator, {d['min_length']} to {d['max_length']} tokens, "
        f"{data['length_mean']:.1f} on average), 10 balanced classes (chance 10%). Every model: "
        f"{p['layers']} layers, width {p['dim']}, {p['heads']} heads, "
        f"{first['parameters']:,} parameters, mean pooling; AdamW (lr {t['lr']:g}, weight decay "
        f"{t['weight_decay']:g}, warm-up {t['warmup']:.0%} then cosine), {t['steps']:,} steps "
        f"of {t['batch_size']} expressions, the final weights tested; seeds "
        f"{', '.join(str(s) for s in p['seeds'])} (same initial weights and batches for every "
        f"attention); `hsa-chunks` runs of {p['chunk']} tokens.\n\n"
        f"Run {result['date']} (commit {machine.get('commit')}) on {machine['cpu']} "
        f"({machine['cores']} cores, device "
        f"`{result['device']}`), {result['jobs']} run(s) at a time with "
        f"{result['threads'] or 'default'} torch thread(s) each; Python {machine['python']}, "
        f"torch {machine['torch']}, numpy {machine['numpy']}; {result['seconds']:.0f} s in all"
        f"{cpu_total}.\n\n"
        "Accuracies in %, mean over seeds [95% t interval]; *vs softmax*: the paired "
        "difference (same seed) in percentage points. Times: training steps only, per run "
        "(mean over seeds); CPU time (the run's own process) is less affected than wall time "
        "by other load on a shared machine. Attention FLOPs per test example over all layers and "
        "heads, counted as in the zero-shot experiment (dense 4 d n^2 per layer and head; HSA "
        "4 d E for E energies; block-local: dense inside each family); *+ means*: HSA's node "
        "means of q, k, v.\n"
    )
    soft_cpu = float(np.mean(models["softmax"]["cpu_seconds"])) if "softmax" in models else math.nan
    rows = [
        "| attention | test accuracy | vs softmax (pp) | final validation | train loss "
        "| wall s / run | CPU s / run | CPU / softmax | attention MFLOPs / example "
        "| + means | / dense |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in models.items():
        vs = m["paired"].get("softmax")
        vs_text = "" if vs is None else _interval(*vs["interval"])
        cpu = float(np.mean(m["cpu_seconds"]))
        f = m["flops"]
        rows.append(
            f"| `{name}` | {_interval(*m['test_interval'])} | {vs_text} | "
            f"{100 * np.mean(m['final_validation']):.1f} | {np.mean(m['train_loss']):.3f} | "
            f"{np.mean(m['seconds']):.0f} | {cpu:.0f} | {cpu / soft_cpu:.2f} | "
            f"{f['attention'] / 1e6:.3g} | {(f['attention'] + f['means']) / 1e6:.3g} | "
            f"{f['attention'] / f['dense']:.2f} |"
        )
    depths = list(data["test_depths"])
    depth_rows = [
        "| attention | "
        + " | ".join(f"depth {k} (n={data['test_depths'][k]})" for k in depths)
        + " |",
        "| --- |" + " ---: |" * len(depths),
    ]
    for name, m in models.items():
        cells = [_interval(*mean_interval(m["by_depth"][k]["accuracy"])) for k in depths]
        depth_rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    names = list(models)
    paired_rows = [
        "| row minus column | " + " | ".join(f"`{n}`" for n in names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for name in names:
        cells = [
            "" if other == name else _interval(*models[name]["paired"][other]["interval"])
            for other in names
        ]
        paired_rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    notes = []
    if "hsa-flat" in models and "softmax" in models:
        same = models["hsa-flat"]["paired"]["softmax"]["same_predictions"]
        notes.append(
            "`hsa-flat` (one family, which is softmax attention) and `softmax` made the same "
            "test prediction on "
            + ", ".join(f"{100 * s:.1f}%" for s in same)
            + " of the test expressions (one figure per seed)."
        )
    text = (
        head
        + "\n"
        + "\n".join(rows)
        + "\n\nPaired differences in test accuracy (percentage points, seed by seed; mean "
        "[95% t interval]):\n\n"
        + "\n".join(paired_rows)
        + "\n\nTest accuracy by nesting depth (%):\n\n"
        + "\n".join(depth_rows)
        + "\n"
        + ("\n" + "\n".join(notes) + "\n" if notes else "")
    )
    path.write_text(text)
    return text


def _colours(names: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {n: cmap(i) for i, n in enumerate(names)}


def _line(name: str) -> dict[str, Any]:
    """``hsa-flat`` computes what ``softmax`` computes: dashed and on top, so both show."""
    return {"ls": "--", "lw": 1.4, "zorder": 3} if name == "hsa-flat" else {"lw": 1.8}


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Validation accuracy against training steps: a line per attention (mean over seeds) in
    a band from the worst to the best seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    colours = _colours(list(models))
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    for name, m in models.items():
        curves = np.array([[a for _, a in c] for c in m["curves"].values()]) * 100
        steps = [s for s, _ in next(iter(m["curves"].values()))]
        ax.plot(steps, curves.mean(0), color=colours[name], label=name, **_line(name))
        ax.fill_between(steps, curves.min(0), curves.max(0), color=colours[name], alpha=0.18)
    ax.axhline(10, color="0.4", ls=":", lw=1)
    size = result["profile"]["train"]["batch_size"]
    ax.set_xlabel(f"training step (batches of {size} expressions)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(
        title=f"attention ({len(next(iter(models.values()))['seeds'])} seeds)", loc="upper left"
    )
    ax.set_title(f"ListOps from scratch, profile {result['profile']['name']}")
    fig.text(0.01, -0.02, CAPTIONS["curves"], fontsize=8, ha="left", va="top", wrap=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_by_depth(result: dict[str, Any], path: Path) -> None:
    """Test accuracy against expression depth: a line per attention with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    counts = result["data"]["test_depths"]
    depths = [int(k) for k in counts]
    colours = _colours(list(models))
    fig, ax = plt.subplots(figsize=(9, 5.5), constrained_layout=True)
    width = 0.3 / max(1, len(models))
    for i, (name, m) in enumerate(models.items()):
        stats = [mean_interval(m["by_depth"][str(k)]["accuracy"]) for k in depths]
        mean = np.array([s[0] for s in stats]) * 100
        low = np.array([s[1] for s in stats]) * 100
        high = np.array([s[2] for s in stats]) * 100
        x = np.array(depths) + (i - (len(models) - 1) / 2) * width
        err = None if np.isnan(low).all() else np.vstack([mean - low, high - mean])
        ax.errorbar(
            x, mean, yerr=err, color=colours[name], marker="o", capsize=3, label=name, **_line(name)
        )
    ax.axhline(10, color="0.4", ls=":", lw=1)
    ax.set_xticks(depths, [f"{k}\n(n={counts[str(k)]})" for k in depths])
    ax.set_xlabel("nesting depth of the expression (test expressions of that depth)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(title="attention")
    ax.set_title(f"Accuracy by depth, profile {result['profile']['name']}")
    fig.text(0.01, -0.02, CAPTIONS["depth"], fontsize=8, ha="left", va="top", wrap=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
