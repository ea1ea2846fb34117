"""Saving a trained classifier and loading it back (``torch.save`` of plain data and tensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .model import Classifier, ModelConfig

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "hsa-listops-classifier/1"


def save_checkpoint(model: Classifier, path: Path, **extra: Any) -> None:
    """Write ``model``'s config and weights (on the CPU) and ``extra`` plain values to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "config": model.config.to_dict(),
            "state_dict": state,
            "extra": extra,
        },
        path,
    )


def load_checkpoint(
    path: Path, *, device: torch.device | str = "cpu"
) -> tuple[Classifier, dict[str, Any]]:
    """The classifier saved at ``path`` (in eval mode, on ``device``) and its ``extra`` values.

    ``ValueError`` if the file is not a checkpoint of this format.
    """
    data = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    model = Classifier(ModelConfig(**data["config"])).to(device)
    model.load_state_dict(data["state_dict"])
    model.eval()
    return model, dict(data["extra"])
