"""One training run: a seeded model, AdamW, a fixed number of steps, validation curve, test.

Everything random in a run follows its ``seed``: the initial weights (``torch.manual_seed``, so
every attention starts from the same values) and the order of the training batches
(:meth:`EncodedSplit.training_order` from ``numpy.random.default_rng(seed)``, the same for every
attention).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .batching import Batch, EncodedSplit
from .checkpoint import save_checkpoint
from .checks import check_int
from .model import Classifier, ModelConfig

__all__ = ["TrainConfig", "predict", "train_run"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and budget: ``steps`` AdamW steps of ``batch_size`` examples, learning rate
    ``lr`` warmed up linearly over the first ``warmup`` fraction of the steps and then decayed
    to zero on a cosine, ``weight_decay``, gradients clipped to norm ``clip``; validation
    accuracy every ``eval_every`` steps (and after the last)."""

    steps: int = 2_000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    clip: float = 1.0
    eval_every: int = 100
    eval_batch_size: int = 250

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            check_int(getattr(self, name), name, 1)
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must lie in [0, 1), got {self.warmup}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lr_factor(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based) over ``lr``."""
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, self.steps - warm)))


@torch.no_grad()
def predict(
    model: Classifier, batches: list[tuple[np.ndarray, Batch]], device: torch.device | str
) -> np.ndarray:
    """The predicted class of every example of ``batches`` (``(indices, batch)`` pairs, as
    :meth:`EncodedSplit.batches` gives), at its index (model left in eval mode)."""
    model.eval()
    out = np.full(sum(len(i) for i, _ in batches), -1, dtype=np.int64)
    for indices, batch in batches:
        out[indices] = model(batch.to(device)).argmax(-1).cpu().numpy()
    return out


def train_run(
    model_config: ModelConfig,
    train: TrainConfig,
    splits: dict[str, EncodedSplit],
    seed: int,
    *,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one model from ``seed`` on ``splits["train"]``; evaluate on ``"validation"`` and
    ``"test"``; save the final weights to ``checkpoint`` if given. ``on_step(n)`` is called
    after every ``n`` steps done (progress).

    Returns plain data: ``curve`` (``[step, validation accuracy]`` pairs), ``test_accuracy``,
    ``test_predictions``, ``train_loss`` (mean of the last tenth of the steps), ``seconds`` and
    ``cpu_seconds`` of the training steps alone, ``eval_seconds``, ``parameters``.
    """
    attention, chunk = model_config.attention, model_config.chunk
    torch.manual_seed(seed)
    model = Classifier(model_config).to(device)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=train.lr, betas=(0.9, 0.98), weight_decay=train.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, train.lr_factor)
    evaluation = {
        name: splits[name].batches(attention, chunk=chunk, batch_size=train.eval_batch_size)
        for name in ("validation", "test")
    }
    order = splits["train"].training_order(np.random.default_rng(seed), train.batch_size)
    curve: list[list[float]] = []
    losses: list[float] = []
    seconds = cpu_seconds = eval_seconds = 0.0

    def validate(step: int) -> None:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        pred = predict(model, evaluation["validation"], device)
        curve.append([step, float((pred == splits["validation"].labels).mean())])
        eval_seconds += time.perf_counter() - t0

    validate(0)
    for step in range(train.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        batch = splits["train"].batch(next(order), attention, chunk=chunk).to(device)
        loss = F.cross_entropy(model(batch), batch.labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip)
        optimiser.step()
        schedule.step()
        losses.append(loss.detach().item())
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        if (step + 1) % train.eval_every == 0 or step + 1 == train.steps:
            validate(step + 1)
        if on_step is not None:
            on_step(1)
    test_pred = predict(model, evaluation["test"], device)
    if checkpoint is not None:
        save_checkpoint(model, checkpoint, seed=seed, steps=train.steps)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "attention": attention,
        "seed": seed,
        "curve": curve,
        "test_accuracy": float((test_pred == splits["test"].labels).mean()),
        "test_predictions": test_pred.tolist(),
        "train_loss": float(np.mean(tail)),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "eval_seconds": eval_seconds,
        "parameters": model.num_parameters(),
    }
