"""Train and evaluate one configuration on one fold, resumably.

>>> from cytotune.engine.train import FoldTrainer, TrainConfig, load_model, task_spec
>>> model_config = ModelConfig.from_sample(sample, in_chans=3, task="binary")
>>> trainer = FoldTrainer(model_config, TrainConfig.from_sample(sample["train"], epochs=5),
...                       dataset, train_ids, val_ids, device="cuda", fold=0)
>>> for epoch in range(5):
...     stats = trainer.train_epoch(epoch)
...     evaluation = trainer.evaluate()  # probabilities / predictions for engine.metrics
>>> trainer.save("study/trial_0/fold_0")
>>> model, config = load_model("study/trial_0/fold_0")
"""

from .checkpoint import data_contract, load_model, read_config
from .config import TrainConfig
from .evaluation import FoldEvaluation, check_compatible, task_spec
from .optim import OPTIMIZERS, WarmupCosine, balanced_class_weights, create_optimizer
from .trainer import FoldTrainer, fold_seed

__all__ = [
    "OPTIMIZERS",
    "FoldEvaluation",
    "FoldTrainer",
    "TrainConfig",
    "WarmupCosine",
    "balanced_class_weights",
    "check_compatible",
    "create_optimizer",
    "data_contract",
    "fold_seed",
    "load_model",
    "read_config",
    "task_spec",
]
