"""``FoldTrainer``: train one configuration on one fold, evaluate it, checkpoint and resume it.

The loop, per epoch: set the ProtoPNet stage (if the model has a schedule) -> one pass over the
training split (autocast, backward, clip, step, per-step LR schedule) -> push the prototypes
and train the last layer alone when the schedule says so. Losses are summed on the device and
read once per epoch. The trainer owns its torch RNG stream: each call runs inside
``torch.random.fork_rng`` with the trainer's saved state, so folds trained in lockstep in one
process neither disturb each other nor the caller, and a resumed trainer draws the same numbers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cytotune.engine.data import CellDataset
from cytotune.engine.data.loader import Batch, LoaderConfig, create_loader
from cytotune.search_spaces import ModelConfig
from cytotune.search_spaces.models import CytoModel, capabilities_of, create_model, task_loss
from torch import Tensor

from . import checkpoint
from .config import TrainConfig
from .evaluation import FoldEvaluation, check_compatible, task_spec
from .graphs import GraphedStep, draws_random_numbers, graph_support
from .optim import CLASS_WEIGHTINGS, create_optimizer, create_scheduler
from .recipe import WeightEMA, mix_batch, tta_views

# Loader epoch keys (they seed order and augmentation) of the passes that are not main epochs.
PUSH_EPOCH_KEY = 1_000_000
LAST_LAYER_EPOCH_KEY = 2_000_000

AUTOCAST_DTYPES = {
    "auto": lambda device: torch.bfloat16 if device.type == "cuda" else None,
    "bf16": lambda device: torch.bfloat16,
    "fp32": lambda device: None,
}


def run_to_end(steps: Generator):
    """Exhaust a generator; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def fold_seed(seed: int, fold: int) -> int:
    """A 32-bit seed for (seed, fold): distinct, well-mixed streams per fold."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


class FoldTrainer:
    """Train and evaluate one model configuration on one fold.

    Args:
        model_config: the model to build (its channels and task must fit the dataset).
        train_config: optimiser, schedule, precision, augmentation, loader.
        dataset: the dataset (or its directory).
        train_ids: cell ids of the training split.
        val_ids: cell ids of the validation split.
        device: torch device.
        fold: fold index; with ``train_config.seed`` it seeds everything random.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        dataset: CellDataset | str | Path,
        train_ids,
        val_ids,
        device: str | torch.device = "cpu",
        fold: int = 0,
    ) -> None:
        self.dataset = dataset if isinstance(dataset, CellDataset) else CellDataset(dataset)
        self.manifest = self.dataset.manifest
        check_compatible(model_config, self.manifest)
        for name, ids in (("train_ids", train_ids), ("val_ids", val_ids)):
            if len(ids) == 0:
                raise ValueError(f"{name} is empty; fold {fold} needs cells on both sides")
        # batch "auto" and the LR scaled to the batch become concrete values here (and so in
        # the checkpoint's config.json)
        train_config = train_config.resolved(max(self.manifest.shape[1:]), len(train_ids))
        self.model_config, self.config, self.fold = model_config, train_config, fold
        self.device = torch.device(device)
        self.seed = fold_seed(train_config.seed, fold)
        self.autocast_dtype = AUTOCAST_DTYPES[train_config.precision](self.device)
        cl = train_config.channels_last
        self.channels_last = self.device.type == "cuda" if cl == "auto" else cl

        self._rng = self._seeded_rng_state(self.seed)
        with self._rng_scope():
            model = create_model(model_config)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        capabilities = capabilities_of(model)
        self.uses_mask = capabilities.takes_mask
        # Models that keep CytoModel.compute_loss are trained on forward + task loss directly:
        # that compute_loss reads ``loss.item()`` (a device sync) on every batch.
        self._plain_loss = type(model).compute_loss is CytoModel.compute_loss
        if train_config.compile:
            model.compile()
        self.schedule = model.schedule if capabilities.staged else None
        # EMA and mixing need a model trained on the task loss alone, without prototype pushes
        self.ema = (
            WeightEMA(model, train_config.ema)
            if train_config.ema > 0 and self.schedule is None
            else None
        )
        self.mixing = (
            (train_config.mixup > 0 or train_config.cutmix > 0)
            and model.task.is_classification
            and self._plain_loss
        )
        self.graphed, self.eager_reason = graph_support(
            device=self.device,
            setting=train_config.cuda_graphs,
            optimizer=train_config.optimizer,
            plain_loss=self._plain_loss,
            mixing=self.mixing,
            staged=self.schedule is not None,
            compiled=train_config.compile,
            random_draws=draws_random_numbers(model),
        )
        self._graph_step: GraphedStep | None = None

        self.train_loader = self._loader(train_ids, train=True)
        self.val_loader = self._loader(val_ids, train=False)
        decay = train_config.weight_decay + float(model.l2)  # CytoModel.l2: the family's own
        self.optimizer = create_optimizer(model.parameters(), train_config, decay, self.device)
        self.scheduler = create_scheduler(self.optimizer, train_config, len(self.train_loader))
        self.class_weights = self._class_weights(train_ids)  # (K,) or None
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []

    # ----------------------------------------------------------------------------- setup
    def _loader(self, cell_ids, train: bool):
        c = self.config
        config = LoaderConfig(
            batch_size=c.batch_size,
            shuffle=train,
            seed=self.seed,
            normalization=c.normalization,
            augment=c.augment if train else LoaderConfig().augment,
            drop_last=train and len(cell_ids) >= c.batch_size,
            with_masks=self.uses_mask and self.manifest.has_mask,
            pin_memory=self.device.type == "cuda",
        )
        return create_loader(c.loader, self.dataset, cell_ids, config, self.device)

    def _class_weights(self, train_ids) -> Tensor | None:
        if not self.model.task.is_classification:
            return None
        meta = self.dataset.metadata()[["cell_id", "label"]].set_index("cell_id")
        labels = meta.loc[list(train_ids), "label"].map(self.manifest.label_map).to_numpy()
        weights = CLASS_WEIGHTINGS[self.config.class_weighting](labels, len(self.manifest.classes))
        if weights is None:
            return None
        return torch.as_tensor(weights, dtype=torch.float32, device=self.device)

    def _seeded_rng_state(self, seed: int) -> dict[str, Tensor]:
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(seed)
            return self._capture_rng()

    def _capture_rng(self) -> dict[str, Tensor]:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    @contextlib.contextmanager
    def _rng_scope(self) -> Iterator[None]:
        """Run with this trainer's RNG state; keep the advanced state, restore the caller's."""
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self._rng["cpu"])
            if cuda:
                torch.cuda.set_rng_state(self._rng["cuda"], self.device)
            yield
            self._rng = self._capture_rng()

    def _autocast(self, cache_enabled: bool = True):
        return torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=self.autocast_dtype is not None,
            cache_enabled=cache_enabled,
        )

    # ----------------------------------------------------------------------------- training
    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
        x = batch.images  # (B, C, H, W), normalised, on the device
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, batch.targets, batch.masks if self.uses_mask else None

    def _cross_entropy(self, output: Tensor, y: Tensor) -> Tensor:
        return torch.nn.functional.cross_entropy(
            output, y, weight=self.class_weights, label_smoothing=self.config.label_smoothing
        )

    def _loss(self, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        task = self.model.task
        if self._plain_loss:
            if self.mixing:
                x, y, partner, lam = mix_batch(x, y, self.config.mixup, self.config.cutmix)
                output = self.model(x)  # (B, K)
                return lam * self._cross_entropy(output, y) + (1 - lam) * self._cross_entropy(
                    output, partner
                )
            output = self.model(x)  # (B, K) or (B, T)
            if task.is_classification:
                return self._cross_entropy(output, y)
            return task_loss(task, output, y)
        out = self.model.compute_loss(x, y, mask)
        if not task.is_classification or (
            self.class_weights is None and not self.config.label_smoothing
        ):
            return out.loss
        # Swap compute_loss's plain cross-entropy for the weighted / smoothed one.
        return out.loss - task_loss(task, out.output, y) + self._cross_entropy(out.output, y)

    def _graph_loss(self, x: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
        with self._autocast(cache_enabled=False):  # its cast cache must not outlive a capture
            return self._loss(x, y, mask)

    def _main_step(self) -> GraphedStep:
        """The main pass's step, captured as a CUDA graph after a short eager warm-up."""
        if self._graph_step is None:
            self._graph_step = GraphedStep(
                self._graph_loss, self.model, self.optimizer, self.config.grad_clip
            )
        return self._graph_step

    def _pass_steps(
        self, batches: Iterator[Batch], optimizer, scheduler=None
    ) -> Generator[None, None, dict]:
        """One pass of optimiser steps, yielding after each; returns mean loss, images and the
        last step's LR."""
        self.model.train()
        clip = self.config.grad_clip
        total = torch.zeros((), device=self.device)
        images, lr = 0, float(optimizer.param_groups[0]["lr"])
        graphed = self._main_step() if self.graphed and scheduler is not None else None
        for batch in batches:
            x, y, mask = self._inputs(batch)
            lr = optimizer.param_groups[0]["lr"]  # a device tensor under CUDA graphs: no sync
            lr = lr.clone() if isinstance(lr, Tensor) else lr
            if graphed is not None:
                loss = graphed(x, y, mask)
            else:
                with self._autocast():
                    loss = self._loss(x, y, mask)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
                if self.ema is not None:  # the main pass only, not ProtoPNet's last-layer passes
                    self.ema.update(self.model)
            total += loss.detach().float() * len(batch)
            images += len(batch)
            yield
        return {"loss": total.item() / max(images, 1), "images": images, "lr": float(lr)}

    def _run_epoch(self, batches: Iterator[Batch], optimizer, scheduler=None) -> dict:
        """One pass of optimiser steps; returns mean loss, images and last step's LR."""
        return run_to_end(self._pass_steps(batches, optimizer, scheduler))

    def train_epoch(self, epoch: int | None = None) -> dict[str, Any]:
        """Train one epoch (``epoch`` defaults to the next one), plus push / last-layer epochs.

        Returns:
            ``epoch`` (1-based, epochs completed), ``loss`` (mean training loss), ``lr`` (LR of
            the last step), ``images``, ``seconds`` (the whole call), ``images_per_s`` (the
            main pass); with a ProtoPNet schedule also ``stage``, ``pushed`` and, after a push,
            ``last_layer_loss``.
        """
        steps = self.epoch_steps(epoch)
        with self._rng_scope():
            return run_to_end(steps)

    def epoch_steps(self, epoch: int | None = None) -> Generator[None, None, dict[str, Any]]:
        """``train_epoch`` as a generator that yields after every optimiser step of the main
        pass and returns the epoch's record, so that several trainers can take turns
        (``parallel.train_concurrently``). The caller runs every resumption inside
        ``rng_scope()`` (and on the trainer's CUDA stream): the steps draw from this trainer's
        RNG stream only."""
        epoch = self.epoch if epoch is None else epoch
        schedule = self.schedule
        start = time.perf_counter()
        if schedule is not None:
            self.model.set_stage(schedule.stage(epoch))
        stats = yield from self._pass_steps(
            self.train_loader.epoch(epoch, train=True), self.optimizer, self.scheduler
        )
        main_seconds = time.perf_counter() - start
        record = {"epoch": epoch + 1, **stats}
        if schedule is not None:
            record["stage"] = self.model.stage
            record["pushed"] = schedule.push_after(epoch, self.config.epochs)
            if record["pushed"]:
                record.update(self._push_and_tune(epoch, schedule.last_layer_epochs))
        record["seconds"] = time.perf_counter() - start
        record["images_per_s"] = stats["images"] / max(main_seconds, 1e-9)
        self.epoch = epoch + 1
        self.history.append(record)
        return record

    def rng_scope(self):
        """Run with this trainer's RNG state (see ``epoch_steps``)."""
        return self._rng_scope()

    def _push_and_tune(self, epoch: int, last_layer_epochs: int) -> dict:
        """Project prototypes onto training patches (un-augmented, with masks and cell ids),
        then train the last layer alone at the constant base LR."""

        def batches():
            for batch in self.train_loader.epoch(PUSH_EPOCH_KEY + epoch, train=False):
                x, y, mask = self._inputs(batch)
                yield x, y, mask, list(batch.cell_ids)

        self.model.push(batches())
        if not last_layer_epochs:
            return {}
        self.model.set_stage("last_layer")
        optimizer = create_optimizer(
            self.model.last_layer.parameters(), self.config, 0.0, self.device
        )
        losses = []
        for j in range(last_layer_epochs):
            key = LAST_LAYER_EPOCH_KEY + epoch * 1000 + j
            losses.append(self._run_epoch(self.train_loader.epoch(key, train=True), optimizer))
        return {"last_layer_loss": losses[-1]["loss"]}

    def fit(self, epochs: int | None = None) -> list[dict]:
        """Train from the next epoch up to ``epochs`` (default ``config.epochs``)."""
        for epoch in range(self.epoch, epochs or self.config.epochs):
            self.train_epoch(epoch)
        return self.history

    # ----------------------------------------------------------------------------- evaluation
    @property
    def eval_model(self) -> torch.nn.Module:
        """The model that is evaluated and saved: the weight EMA when on, else the model."""
        return self.ema.model if self.ema is not None else self.model

    @torch.no_grad()
    def evaluate(self, tta: bool | None = None) -> FoldEvaluation:
        """Predict the validation split (no augmentation, loader order).

        Args:
            tta: average the logits over ``config.tta``'s views (flips, 90-degree turns);
                default: only once training is finished (the last epoch).
        """
        model = self.eval_model
        model.eval()
        if tta is None:
            tta = self.epoch >= self.config.epochs
        views = tta_views(self.config.tta if tta else "none", *self.manifest.shape[1:])
        outputs, targets, ids = [], [], []
        for batch in self.val_loader.epoch(0, train=False):
            x, y, mask = self._inputs(batch)
            out = 0.0
            for view in views:
                with self._autocast():
                    vx = view(x)
                    o = model(vx) if mask is None else model(vx, mask=view(mask))
                out = out + o.float()
            out = out / len(views)
            outputs.append(out)  # (B, K) or (B, T), logits averaged over the views
            targets.append(y)
            ids.append(batch.cell_ids)
        output, target = torch.cat(outputs), torch.cat(targets)
        task = self.model.task
        loss = task_loss(task, output, target)
        if task.is_classification:
            output = output.softmax(1)
        return FoldEvaluation(
            cell_ids=np.concatenate(ids),
            targets=target.cpu().numpy(),
            outputs=output.cpu().numpy(),
            loss=float(loss),
            task=self.manifest.task,
            names=tuple(task_spec(self.manifest).target_names),
        )

    def release_data(self) -> None:
        """Drop the loaders (the split's pixels, on the GPU when training there) of a fold that
        is done; the model, optimiser state and history stay for ``save``."""
        self.train_loader = self.val_loader = None
        self._graph_step = None  # the graph's memory pool and static batch

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: model, optimiser, schedule, epoch,
        RNG state, history and the model's extra state (ProtoPNet stage, prototype sources).
        With a weight EMA, ``model`` is the average and ``live_model`` the trained weights."""
        return {"model": self.eval_model.state_dict(), **self._trainer_state()}

    def _trainer_state(self, finished: bool = False) -> dict[str, Any]:
        """The state beside the weights; ``finished`` (a fold trained to the end, never to be
        continued) leaves out the live weights, optimiser and schedule: 1/3 of the bytes."""
        extra = {}
        if self.ema is not None and not finished:  # model.pt holds the average
            extra["live_model"] = self.model.state_dict()
            extra["ema_updates"] = self.ema.updates
        if not finished:
            extra["optimizer"] = self.optimizer.state_dict()
            extra["scheduler"] = self.scheduler.state_dict()
        return {
            **extra,
            "epoch": self.epoch,
            "fold": self.fold,
            "rng": dict(self._rng),
            "history": list(self.history),
            "model_extra": checkpoint.model_extra_state(self.model),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict`` (or a checkpoint: there ``model`` is the EMA's weights
        and ``live_model`` the trained ones)."""
        if self.ema is not None and "live_model" in state:
            self.ema.load_state_dict(state["model"], int(state.get("ema_updates", 0)))
            self.model.load_state_dict(state["live_model"])
        else:
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.load_state_dict(state["model"])
        checkpoint.load_model_extra_state(self.model, state["model_extra"])
        if "optimizer" in state:  # absent for a finished fold (see ``save(finished=True)``)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self._rng = {k: v.cpu() for k, v in state["rng"].items()}
        self.history = list(state["history"])

    def save(
        self, directory: str | Path, metrics: dict | None = None, finished: bool = False
    ) -> Path:
        """Write ``model.pt``, ``config.json`` and ``trainer.pt`` into ``directory`` atomically;
        ``finished``: without optimiser state (a fold that will not be trained further)."""
        state = self._trainer_state(finished)
        config = checkpoint.checkpoint_config(
            self.model_config, self.config, self.manifest, self.fold, self.epoch, metrics
        )
        config["model_extra"] = state["model_extra"]
        return checkpoint.write(directory, self.eval_model.state_dict(), state, config)

    @classmethod
    def load(
        cls,
        directory: str | Path,
        dataset: CellDataset | str | Path,
        train_ids,
        val_ids,
        device: str | torch.device = "cpu",
        fold: int | None = None,
    ) -> FoldTrainer:
        """A trainer restored from ``save``; ``fold`` (if given) must match the saved one."""
        config, model_state, state = checkpoint.read(directory, device)
        if fold is not None and fold != config["fold"]:
            raise ValueError(f"checkpoint {directory} is of fold {config['fold']}, not {fold}")
        dataset = dataset if isinstance(dataset, CellDataset) else CellDataset(dataset)
        checkpoint.check_contract(config["data"], dataset.manifest, directory)
        trainer = cls(
            checkpoint.model_config_of(config),
            TrainConfig.from_dict(config["train"]),
            dataset,
            train_ids,
            val_ids,
            device=device,
            fold=config["fold"],
        )
        trainer.load_state_dict({"model": model_state, **state})
        return trainer
