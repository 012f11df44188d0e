"""The LightningModule: cross-entropy step, epoch metrics, SGD, lr scaling and schedule.

Nothing here reads a device value every step: losses and correct counts accumulate in
device tensors and are read once per epoch, and the divergence check reads one scalar every
``check_every_n_steps`` steps. (``self.log(..., on_step=True)`` or a per-step ``.item()``
would force a host-device sync each step, which dominates small-batch GPU runs.)

Optimization is manual (Lightning's ``automatic_optimization = False``) so that one
``training_step`` call can take several SGD steps: the loader may stack k batches per item
(``DeviceLoader(batches_per_item=k)``), and each is one step with its own forward, backward,
optimizer and lr-scheduler step, exactly as with k = 1. Lightning's per-call machinery,
about 1-1.5 ms on a 2-core CPU, then costs 1/k per step: at batch 2 it had cost a quarter to a
third of normbench's throughput (scripts/bench_overhead.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from normbench.optim import build_optimizer, build_scheduler, check_optim, scaled_lr

log = logging.getLogger("normbench")


class Diverged(Exception):
    """The training loss became NaN or infinite at ``step`` (0-based optimizer step)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"non-finite training loss at step {step}")
        self.step = step


#: TensorBoard sorts its sections by name: accuracy and loss first, then the lr, then time.
TB_TAGS = {"test_acc": "accuracy/test", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
           "test_loss": "loss/test", "train_loss": "loss/train", "val_loss": "loss/val", "lr": "lr/lr",
           "epoch_s": "time/epoch_s"}


def tb_metrics(row: Mapping[str, float]) -> dict[str, float]:
    """An epoch's history row as TensorBoard scalars (the same tags for every run; ``*/val``
    only with a validation split). The HPARAMS tab reads ``accuracy/test`` and ``loss/test``
    themselves, so no duplicate cards."""
    return {tag: row[key] for key, tag in TB_TAGS.items() if key in row}


class SGDModule(L.LightningModule):
    """What a run and a pack (``normbench.packed``) share: manual optimization (module
    docstring), the batch-scaled lr, the optimizer and schedule (``normbench.optim``)."""

    def __init__(self, model: nn.Module, optim: Mapping[str, Any], batch_size: int, epochs: int,
                 steps_per_epoch: int, check_every_n_steps: int = 50,
                 memory_format: torch.memory_format = torch.contiguous_format, steps_per_pass: int | None = None) -> None:
        super().__init__()
        self.steps_per_pass = steps_per_pass or steps_per_epoch  # warmup counts passes (budget: epoch = period)
        check_optim(optim)
        self.automatic_optimization = False
        self.memory_format = memory_format
        self.model = model
        self.optim = dict(optim)
        self.batch_size, self.epochs, self.steps_per_epoch = batch_size, epochs, steps_per_epoch
        self.check_every = max(1, int(check_every_n_steps))
        self.lr = scaled_lr(optim["base_lr"], batch_size, optim["base_batch"], optim["lr_scaling"])
        #: What Lightning's validation loop evaluates after every epoch, in dataloader order:
        #: the test split, or a held-out validation split and then the test split (data.val_size).
        self.eval_splits: tuple[str, ...] = ("test",)
        self._no_bad_step = torch.iinfo(torch.int64).max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    #: The shape of one evaluation sum: a scalar, or one per member for a pack.
    eval_shape: tuple[int, ...] = ()

    def on_validation_epoch_start(self) -> None:
        """Stop the training clock (the test pass that ends a training epoch), then zero each
        evaluated split's loss and correct-count sums and image count."""
        if getattr(self, "_train_s", 0.0) is None:
            self._sync()
            self._train_s = time.perf_counter() - self._epoch_t0
        dev = self.device
        self._eval = [(torch.zeros(self.eval_shape, device=dev), torch.zeros(self.eval_shape, device=dev, dtype=torch.long),
                       [0]) for _ in self.eval_splits]

    def configure_optimizers(self) -> dict[str, Any]:
        opt = build_optimizer(self.model.parameters(), self.optim, self.lr)
        sched = build_scheduler(opt, self.optim, self.epochs, self.steps_per_epoch, self.steps_per_pass)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class NormbenchModule(SGDModule):
    """Trains ``model`` with SGD; records per-epoch train and test metrics in ``history``."""

    def __init__(self, model: nn.Module, optim: Mapping[str, Any], batch_size: int, epochs: int,
                 steps_per_epoch: int, check_every_n_steps: int = 50,
                 memory_format: torch.memory_format = torch.contiguous_format, steps_per_pass: int | None = None) -> None:
        super().__init__(model, optim, batch_size, epochs, steps_per_epoch, check_every_n_steps, memory_format,
                         steps_per_pass)
        self.history: list[dict[str, float]] = []
        self.attempt = 1  # this launch's number among the run's attempts (normbench.rundir.start_attempt)

    # --- training ------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        dev = self.device
        self._train_loss = torch.zeros((), device=dev)
        self._train_correct = torch.zeros((), device=dev, dtype=torch.long)
        self._train_seen = 0
        self._first_bad = torch.full((), self._no_bad_step, device=dev, dtype=torch.long)
        self._sync()
        self._epoch_t0 = time.perf_counter()
        self._train_s: float | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if x.dim() == 4:  # one batch per item; a 5-D item stacks several (see the module docstring)
            x, y = x[None], y[None]
        opt, sched = self.optimizers(), self.lr_schedulers()
        check_before = self.global_step // self.check_every
        for xb, yb in zip(x, y):
            logits = self.model(xb.contiguous(memory_format=self.memory_format))
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt.step()
            sched.step()
            with torch.no_grad():
                d = loss.detach()
                self._train_loss += d * len(yb)
                self._train_correct += (logits.argmax(1) == yb).sum()
                # global_step has just counted this step: the step that produced `d` is one before
                self._first_bad = torch.where(torch.isfinite(d), self._first_bad,
                                              self._first_bad.clamp_max(self.global_step - 1))
            self._train_seen += len(yb)
        if self.global_step // self.check_every != check_before:
            self._raise_if_diverged()

    def _raise_if_diverged(self) -> None:
        first = int(self._first_bad)  # the one host sync, every check_every steps
        if first != self._no_bad_step:
            raise Diverged(first)

    # --- test after every epoch (Lightning's validation loop runs on the test split) ---------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self.model(x)
        loss, correct, seen = self._eval[dataloader_idx]
        loss += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen[0] += len(y)

    def on_train_epoch_end(self) -> None:
        self._raise_if_diverged()
        if self._train_s is None:
            self._sync()
            self._train_s = time.perf_counter() - self._epoch_t0
        seen = max(1, self._train_seen)
        row: dict[str, float] = {
            "epoch": self.current_epoch + 1,
            "train_loss": float(self._train_loss) / seen,
            "train_acc": int(self._train_correct) / seen,
        }
        for split, (loss, correct, n) in zip(self.eval_splits, self._eval):
            row[f"{split}_loss"], row[f"{split}_acc"] = float(loss) / max(1, n[0]), int(correct) / max(1, n[0])
        row.update(lr=self.trainer.optimizers[0].param_groups[0]["lr"], epoch_s=time.perf_counter() - self._epoch_t0,
                   train_s=self._train_s, train_images=self._train_seen, attempt=self.attempt)
        self.history.append(row)
        if self.logger is not None:
            # Logged against the epoch, not the step: curves of runs with different batch
            # sizes (64x apart in steps) then share one x axis in TensorBoard.
            self.logger.log_metrics(tb_metrics(row), step=row["epoch"])
        log.info("epoch %d/%d  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4g  %.1f s",
                 row["epoch"], self.epochs, row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"],
                 row["lr"], row["epoch_s"])

    # --- resume ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["normbench_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = list(checkpoint.get("normbench_history", []))
