"""Training a pack: K runs of one setup (only their seeds differ) as one model, one step for all.

``normbench.pack`` lays the members out as channel blocks; this module trains them with
Lightning: ``PackLoader`` gives each member its own data order and augmentation (its own
``DeviceLoader``, seeded as when it runs alone) and stacks them along channels;
``PackedModule`` sums the members' mean losses (so each member's gradient is its own), keeps
a history per member, logs each member to its own TensorBoard folder, and retires a member
that diverges: its record is written at once, its weights, buffers and momentum are zeroed
(no packed operation mixes members, so the others are unaffected, tested), and the rest go
on. The run lifecycle (run folders, locks, records) is in ``normbench.train``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from normbench.data import DeviceLoader
from normbench.module import Diverged, SGDModule, tb_metrics
from normbench.pack import PackedNet

log = logging.getLogger("normbench")


class AllDiverged(Exception):
    """Every member of a pack has diverged: nothing is left to train."""


class _FanOutSampler:
    """What Lightning calls ``set_epoch`` on: passes the epoch to every member's sampler."""

    def __init__(self, loaders: Sequence[DeviceLoader]) -> None:
        self.loaders = loaders

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0].sampler)


class PackLoader:
    """K members' training loaders as one: each item is (x, y) with x the members' batches
    side by side along channels, (..., B, K*C, H, W), and y their labels, (..., K, B). The
    members' loaders are exactly those of their unpacked runs (same seed, same batches)."""

    def __init__(self, loaders: Sequence[DeviceLoader]) -> None:
        if len({loader.num_batches for loader in loaders}) != 1:
            raise ValueError("packed members must have the same number of batches per epoch")
        self.loaders = list(loaders)
        self.sampler = _FanOutSampler(self.loaders)
        self.batch_sampler = None  # Lightning probes DataLoader's attributes; batching is ours

    @property
    def num_batches(self) -> int:
        return self.loaders[0].num_batches

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for items in zip(*self.loaders):
            yield torch.cat([x for x, _ in items], dim=-3), torch.stack([y for _, y in items], dim=-2)


class PackedModule(SGDModule):
    """Trains a ``PackedNet`` of K members with one SGD (elementwise, so per member); keeps
    ``histories[k]`` as ``NormbenchModule.history`` would for member k alone."""

    def __init__(self, model: PackedNet, optim: Mapping[str, Any], batch_size: int, epochs: int,
                 steps_per_epoch: int, check_every_n_steps: int = 50,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 loggers: Sequence[Any] | None = None,
                 on_diverged: Callable[[int, Diverged], None] | None = None, steps_per_pass: int | None = None) -> None:
        super().__init__(model, optim, batch_size, epochs, steps_per_epoch, check_every_n_steps, memory_format,
                         steps_per_pass)
        self.k = model.k
        self.eval_shape = (self.k,)
        self.histories: list[list[dict[str, float]]] = [[] for _ in range(self.k)]
        self.attempts = [1] * self.k  # each member's launch number (normbench.rundir.start_attempt)
        self.member_loggers = list(loggers or [None] * self.k)
        self.on_diverged = on_diverged
        self.alive = [True] * self.k

    # --- training ------------------------------------------------------------------------

    def on_train_epoch_start(self) -> None:
        dev, k = self.device, self.k
        self._weights = torch.tensor(self.alive, dtype=torch.float32, device=dev)
        self._train_loss = torch.zeros(k, device=dev)
        self._train_correct = torch.zeros(k, device=dev, dtype=torch.long)
        self._train_seen = 0
        self._first_bad = torch.full((k,), self._no_bad_step, device=dev, dtype=torch.long)
        self._sync()
        self._epoch_t0 = time.perf_counter()
        self._train_s: float | None = None

    def member_losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's mean cross-entropy, (K,), from logits (B, K, classes) and labels (K, B)."""
        return F.cross_entropy(logits.transpose(1, 2), y.t(), reduction="none").mean(0)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if x.dim() == 4:
            x, y = x[None], y[None]
        opt, sched = self.optimizers(), self.lr_schedulers()
        check_before = self.global_step // self.check_every
        for xb, yb in zip(x, y):
            logits = self.model(xb.contiguous(memory_format=self.memory_format))
            losses = self.member_losses(logits, yb)
            opt.zero_grad(set_to_none=True)
            self.manual_backward((losses * self._weights).sum())
            opt.step()
            sched.step()
            with torch.no_grad():
                d = losses.detach()
                self._train_loss += d * yb.shape[1]
                self._train_correct += (logits.argmax(2) == yb.t()).sum(0)
                self._first_bad = torch.where(torch.isfinite(d), self._first_bad,
                                              self._first_bad.clamp_max(self.global_step - 1))
            self._train_seen += yb.shape[1]
        if self.global_step // self.check_every != check_before:
            self._retire_diverged()

    def _retire_diverged(self) -> None:
        first = self._first_bad.tolist()  # the one host sync, every check_every steps
        for k, step in enumerate(first):
            if self.alive[k] and step != self._no_bad_step:
                self._retire(k, Diverged(step))
        if not any(self.alive):
            raise AllDiverged()

    @torch.no_grad()
    def _retire(self, member: int, err: Diverged) -> None:
        """Member ``member`` diverged: record it, then zero its share of every weight, buffer,
        gradient and momentum buffer, which keeps it finite and out of the loss from now on."""
        self.alive[member] = False
        self._weights[member] = 0.0
        masks = self.model.member_mask(member)
        opt = self.optimizers().optimizer
        for name, t in self.model.state_dict(keep_vars=True).items():
            if t.dim() and t.is_floating_point():
                mask = masks[name].to(t.device)
                t.data.masked_fill_(mask, 0.0)
                if isinstance(t, torch.nn.Parameter):
                    if t.grad is not None:
                        t.grad.masked_fill_(mask, 0.0)
                    for buf in opt.state.get(t, {}).values():
                        if torch.is_tensor(buf) and buf.shape == t.shape:
                            buf.masked_fill_(mask, 0.0)
        if self.on_diverged is not None:
            self.on_diverged(member, err)

    # --- test after every epoch: the same test images for every member ---------------------

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int,
                        dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self.model(x.repeat(1, self.k, 1, 1).contiguous(memory_format=self.memory_format))
        ys = y[:, None].expand(-1, self.k)
        loss, correct, seen = self._eval[dataloader_idx]
        loss += F.cross_entropy(logits.float().transpose(1, 2), ys, reduction="none").sum(0)
        correct += (logits.argmax(2) == ys).sum(0)
        seen[0] += len(y)

    def on_train_epoch_end(self) -> None:
        self._retire_diverged()
        if self._train_s is None:
            self._sync()
            self._train_s = time.perf_counter() - self._epoch_t0
        seen = max(1, self._train_seen)
        loss, correct = self._train_loss.tolist(), self._train_correct.tolist()
        evals = {split: (le.tolist(), ce.tolist(), max(1, n[0])) for split, (le, ce, n) in zip(self.eval_splits, self._eval)}
        test_correct, tseen = evals["test"][1], evals["test"][2]
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        epoch_s = time.perf_counter() - self._epoch_t0
        for k in range(self.k):
            if not self.alive[k]:
                continue
            row = {"epoch": self.current_epoch + 1, "train_loss": loss[k] / seen, "train_acc": correct[k] / seen}
            for split, (le, ce, n) in evals.items():
                row[f"{split}_loss"], row[f"{split}_acc"] = le[k] / n, ce[k] / n
            row.update(lr=lr, epoch_s=epoch_s, train_s=self._train_s, train_images=self._train_seen,
                       attempt=self.attempts[k])
            self.histories[k].append(row)
            logger = self.member_loggers[k]
            if logger is not None:
                logger.log_metrics(tb_metrics(row), step=row["epoch"])
        alive = [k for k in range(self.k) if self.alive[k]]
        accs = " ".join(f"{test_correct[k] / tseen:.4f}" for k in alive)
        log.info("epoch %d/%d  pack of %d: test acc %s  lr %.4g  %.1f s", self.current_epoch + 1, self.epochs,
                 len(alive), accs, lr, epoch_s)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["normbench_histories"] = self.histories

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.histories = [list(h) for h in checkpoint.get("normbench_histories", self.histories)]
