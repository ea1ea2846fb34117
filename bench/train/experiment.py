"""The comparison: every attention of a profile from every seed, on the same data; the summary.

Runs go one at a time in this process (``jobs=1``) or ``jobs`` at a time in worker processes,
each with ``threads`` torch threads; each worker draws the profile's data once (the draw is
seeded, so every process holds the same splits). One progress bar on stderr counts the training
steps of all runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import multiprocessing
import platform
import queue
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import CHECKOUT

from .batching import EncodedSplit
from .dataset import NUM_CLASSES, make_splits
from .flops import flops_per_example
from .profiles import Profile
from .progress import Progress
from .stats import mean_interval
from .training import train_run

__all__ = ["checkpoint_path", "encode_splits", "run_experiment", "summarise"]


def encode_splits(profile: Profile, *, quiet: bool = True) -> dict[str, EncodedSplit]:
    """The profile's train, validation and test splits, encoded."""
    splits = make_splits(profile.data, quiet=quiet)
    return {name: EncodedSplit.from_expressions(part) for name, part in splits.items()}


def checkpoint_path(out: Path, attention: str, seed: int) -> Path:
    """Where the run of ``attention`` from ``seed`` keeps its final weights."""
    return out / "checkpoints" / f"{attention}-seed{seed}.pt"


_WORKER: dict[str, Any] = {}


def _init_worker(profile: Profile, threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    _WORKER["splits"] = encode_splits(profile)


def _worker_run(
    profile: Profile, attention: str, seed: int, out: Path, device: str, steps: Any
) -> dict[str, Any]:
    pending = 0

    def report(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= 10:
            steps.put(pending)
            pending = 0

    result = train_run(
        profile.model_config(attention),
        profile.train,
        _WORKER["splits"],
        seed,
        device=device,
        checkpoint=checkpoint_path(out, attention, seed),
        on_step=report,
    )
    steps.put(pending)
    return result


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=CHECKOUT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "commit": commit,
        "cpu": cpu,
        "cores": multiprocessing.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def run_experiment(
    profile: Profile,
    out: Path,
    *,
    jobs: int = 1,
    threads: int = 1,
    device: str = "cpu",
    quiet: bool = False,
) -> dict[str, Any]:
    """Train every attention of ``profile`` from every seed; checkpoints under
    ``out/checkpoints/``. Returns :func:`summarise`'s plain-data result (JSON-ready).

    ``jobs``: runs at a time (worker processes when above 1); ``threads``: torch threads per
    run (0: torch's default). The data are drawn here too, for the summary.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if threads < 0:
        raise ValueError(f"threads must be 0 (torch's default) or positive, got {threads}")
    started, cpu_started = time.perf_counter(), _cpu_time()
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    splits = encode_splits(profile, quiet=quiet)
    runs = [(a, s) for s in profile.seeds for a in profile.attentions]
    bar = Progress(len(runs) * profile.train.steps, "training", quiet=quiet)
    results: list[dict[str, Any]] = []
    if jobs == 1:
        before = torch.get_num_threads()
        if threads > 0:
            torch.set_num_threads(threads)
        try:
            for i, (attention, seed) in enumerate(runs):
                bar.update(0, note=f"run {i + 1}/{len(runs)}: {attention}, seed {seed}")
                results.append(
                    train_run(
                        profile.model_config(attention),
                        profile.train,
                        splits,
                        seed,
                        device=device,
                        checkpoint=checkpoint_path(out, attention, seed),
                        on_step=bar.update,
                    )
                )
        finally:
            torch.set_num_threads(before)
    else:
        results = _run_parallel(profile, runs, out, jobs, threads, device, bar)
    bar.close()
    wall, cpu = time.perf_counter() - started, _cpu_time() - cpu_started
    result = summarise(profile, splits, results)
    result.update(
        date=date,
        machine=_machine(),
        device=device,
        jobs=jobs,
        threads=threads,
        seconds=wall,
        cpu_seconds=cpu,
    )
    return result


def _cpu_time() -> float:
    """CPU seconds (user and system) of this process and of its finished worker processes."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_parallel(
    profile: Profile,
    runs: list[tuple[str, int]],
    out: Path,
    jobs: int,
    threads: int,
    device: str,
    bar: Progress,
) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        steps = manager.Queue()
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(profile, threads),
        ) as pool:
            futures = [pool.submit(_worker_run, profile, a, s, out, device, steps) for a, s in runs]
            pending = set(futures)
            try:
                while pending:
                    with contextlib.suppress(queue.Empty):
                        bar.update(steps.get(timeout=0.5))
                    finished = {f for f in pending if f.done()}
                    for f in finished:
                        f.result()  # a failed run raises here, ending the experiment
                    pending -= finished
                    bar.update(0, note=f"{len(runs) - len(pending)}/{len(runs)} runs done")
            except BaseException:
                for f in pending:  # runs not started yet are dropped, not trained
                    f.cancel()
                raise
            while not steps.empty():
                bar.update(steps.get())
        return [f.result() for f in futures]


def summarise(
    profile: Profile, splits: dict[str, EncodedSplit], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Per attention: test accuracy over seeds (mean, 95% interval); ``paired``: against every
    other attention, the differences in test accuracy seed by seed (same seed: same initial
    weights and batches), their mean and interval, and the share of equal test predictions;
    validation curves, test accuracy per expression depth, training time, attention FLOPs per
    example; and the data's facts."""
    test = splits["test"]
    depths = sorted({int(d) for d in test.depths})
    by_attention: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        by_attention.setdefault(r["attention"], {})[r["seed"]] = r
    models: dict[str, Any] = {}
    for attention in profile.attentions:
        seeds = by_attention[attention]
        order = sorted(seeds)
        acc = [seeds[s]["test_accuracy"] for s in order]
        per_depth = {}
        for d in depths:
            where = test.depths == d
            values = [
                float(
                    (np.asarray(seeds[s]["test_predictions"])[where] == test.labels[where]).mean()
                )
                for s in order
            ]
            per_depth[str(d)] = {"count": int(where.sum()), "accuracy": values}
        models[attention] = {
            "seeds": order,
            "test_accuracy": acc,
            "test_interval": mean_interval(acc),
            "final_validation": [seeds[s]["curve"][-1][1] for s in order],
            "curves": {str(s): seeds[s]["curve"] for s in order},
            "by_depth": per_depth,
            "train_loss": [seeds[s]["train_loss"] for s in order],
            "seconds": [seeds[s]["seconds"] for s in order],
            "cpu_seconds": [seeds[s]["cpu_seconds"] for s in order],
            "parameters": seeds[order[0]]["parameters"],
            "flops": flops_per_example(profile.model_config(attention), test),
            "test_predictions": {str(s): seeds[s]["test_predictions"] for s in order},
        }
    for name, m in models.items():  # every model ran from the profile's seeds, in order
        m["paired"] = {other: _paired(m, o) for other, o in models.items() if other != name}
    lengths = np.concatenate([splits[n].lengths for n in ("train", "validation", "test")])
    return {
        "profile": profile.to_dict(),
        "models": models,
        "data": {
            "sizes": {n: len(s) for n, s in splits.items()},
            "classes": NUM_CLASSES,
            "length_mean": float(lengths.mean()),
            "length_max": int(lengths.max()),
            "test_depths": {str(d): int((test.depths == d).sum()) for d in depths},
            "test_labels": test.labels.tolist(),
            "test_depth_of_example": test.depths.tolist(),
        },
    }


def _paired(model: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    diff = np.subtract(model["test_accuracy"], other["test_accuracy"])
    same = [
        float(np.mean(np.equal(model["test_predictions"][s], other["test_predictions"][s])))
        for s in model["test_predictions"]
    ]
    return {"differences": diff.tolist(), "interval": mean_interval(diff), "same_predictions": same}
