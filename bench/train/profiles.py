"""The experiment's profiles: the data, the model's shape, the budget and the seeds, chosen
once for every attention alike.

- ``default``: about 15 minutes on a 2-core CPU (two runs at a time, one torch thread each);
- ``full``: longer, deeper expressions, a larger model, more steps and seeds (for a GPU);
- ``tiny``: seconds, for the tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .attentions import ATTENTIONS, check_attention
from .dataset import DataConfig
from .model import ModelConfig
from .training import TrainConfig

__all__ = ["PROFILES", "Profile"]


@dataclass(frozen=True)
class Profile:
    """Everything one comparison needs except where it runs: data, model shape (``dim``,
    ``heads``, ``layers``, ``chunk``), optimiser and budget, seeds, attentions compared."""

    name: str
    data: DataConfig
    train: TrainConfig
    dim: int
    heads: int
    layers: int
    chunk: int
    seeds: tuple[int, ...]
    attentions: tuple[str, ...] = ATTENTIONS

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        if not self.attentions:
            raise ValueError("at least one attention is needed")
        for name in self.attentions:
            check_attention(name)
        self.model_config(self.attentions[0])  # validates the shape

    def model_config(self, attention: str) -> ModelConfig:
        """The classifier of ``attention`` in this profile (the same shape for every one)."""
        return ModelConfig(
            attention,
            dim=self.dim,
            heads=self.heads,
            layers=self.layers,
            max_length=self.data.max_length,
            chunk=self.chunk,
        )

    def replace(self, **changes: Any) -> Profile:
        """A copy with top-level fields, or ``data``/``train`` fields given as ``data_<f>`` and
        ``train_<f>`` (``replace(train_steps=10)``), changed."""
        data = {k[5:]: v for k, v in changes.items() if k.startswith("data_")}
        train = {k[6:]: v for k, v in changes.items() if k.startswith("train_")}
        rest = {k: v for k, v in changes.items() if not k.startswith(("data_", "train_"))}
        return dataclasses.replace(
            self,
            data=dataclasses.replace(self.data, **data),
            train=dataclasses.replace(self.train, **train),
            **rest,
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["seeds"], out["attentions"] = list(self.seeds), list(self.attentions)
        return out


PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        data=DataConfig(
            max_depth=2, max_args=3, max_length=16, train=120, validation=40, test=40, seed=0
        ),
        train=TrainConfig(steps=4, batch_size=8, eval_every=2, eval_batch_size=16),
        dim=16,
        heads=2,
        layers=2,
        chunk=3,
        seeds=(0, 1),
    ),
    "default": Profile(
        name="default",
        data=DataConfig(
            max_depth=4,
            max_args=5,
            nest_probability=0.3,
            max_length=64,
            train=20_000,
            validation=1_000,
            test=2_000,
            seed=0,
        ),
        train=TrainConfig(steps=1_500, batch_size=32, lr=1e-3, eval_every=100),
        dim=64,
        heads=4,
        layers=4,
        chunk=5,
        seeds=(0, 1, 2),
    ),
    "full": Profile(
        name="full",
        data=DataConfig(
            max_depth=8,
            max_args=6,
            nest_probability=0.3,
            min_length=16,
            max_length=512,
            train=96_000,
            validation=2_000,
            test=4_000,
            seed=0,
        ),
        train=TrainConfig(steps=20_000, batch_size=64, lr=5e-4, eval_every=500),
        dim=128,
        heads=8,
        layers=8,
        chunk=5,
        seeds=(0, 1, 2, 3, 4),
    ),
}
