"""Does the hierarchy help? HSA against softmax attention, trained from scratch on ListOps.

ListOps (Nangia and Bowman, 2018) expressions such as ``[MAX 2 9 [MIN 4 7 ] 0 ]`` (value 9)
are trees by construction, and their parse is exact and free. Small encoder classifiers that
differ only in their attention are trained on the same seeded data, from the same seeds, with
the same optimiser and budget, and compared on held-out expressions:

- ``softmax``: dense softmax attention (SDPA);
- ``hsa-parse``: HSA over the parse tree (each operator application a family of its operator
  token, its arguments and its closing bracket);
- ``hsa-chunks``: HSA over runs of tokens and runs of runs (a tree with no syntax);
- ``hsa-flat``: HSA over one family, which is softmax attention (a check of the setup);
- ``block-local``: softmax attention inside each parse family only.

``python -m bench.train`` writes ``results/train/``: ``table.md`` (test accuracy over seeds with
95% intervals, training time, attention FLOPs per example), ``learning_curves.png``,
``accuracy_by_depth.png``, ``results.json`` and the final weights under ``checkpoints/``.

Modules: :mod:`.listops` (grammar, random expressions, values), :mod:`.dataset` (splits),
:mod:`.tokenizer` (ids and parse trees), :mod:`.attentions` (the structures by name),
:mod:`.batching`, :mod:`.model`, :mod:`.training`, :mod:`.checkpoint`, :mod:`.flops`,
:mod:`.stats`, :mod:`.profiles`, :mod:`.experiment`, :mod:`.report`, :mod:`.progress`,
:mod:`.checks`, :mod:`.cli`.
"""

from .attentions import ATTENTIONS, HSA_ATTENTIONS, groups_of, tree_of
from .batching import Batch, EncodedSplit, collate, pack_forest
from .checkpoint import load_checkpoint, save_checkpoint
from .cli import RESULTS_DIR, main
from .dataset import NUM_CLASSES, DataConfig, Splits, make_splits
from .experiment import checkpoint_path, encode_splits, run_experiment, summarise
from .flops import flops_per_example
from .listops import Expression, apply_operator, evaluate, random_expression, to_tokens
from .model import Classifier, ModelConfig
from .profiles import PROFILES, Profile
from .progress import Progress
from .report import plot_by_depth, plot_curves, write_table
from .stats import mean_interval
from .tokenizer import PAD, VOCAB, Encoded, encode, parse_parents
from .training import TrainConfig, predict, train_run

__all__ = [
    "ATTENTIONS",
    "HSA_ATTENTIONS",
    "NUM_CLASSES",
    "PAD",
    "PROFILES",
    "RESULTS_DIR",
    "VOCAB",
    "Batch",
    "Classifier",
    "DataConfig",
    "Encoded",
    "EncodedSplit",
    "Expression",
    "ModelConfig",
    "Profile",
    "Progress",
    "Splits",
    "TrainConfig",
    "apply_operator",
    "checkpoint_path",
    "collate",
    "encode",
    "encode_splits",
    "evaluate",
    "flops_per_example",
    "groups_of",
    "load_checkpoint",
    "main",
    "make_splits",
    "mean_interval",
    "pack_forest",
    "parse_parents",
    "plot_by_depth",
    "plot_curves",
    "predict",
    "random_expression",
    "run_experiment",
    "save_checkpoint",
    "summarise",
    "to_tokens",
    "train_run",
    "tree_of",
    "write_table",
]
