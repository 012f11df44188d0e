"""The run lifecycle: one config -> one run directory (docs/records.md), alone or in a pack.

``run(cfg)`` validates the config, skips a finished run, resumes an unfinished one from
``ckpt/last.ckpt``, trains with Lightning, and writes ``record.json`` atomically with status
``ok``, ``diverged`` or ``failed``. Errors a user can fix (bad config, missing data, an
unwritable folder) end in one line and leave no record.

With ``trainer.pack_seeds=[s1, s2, ...]`` (set by the sweeper, ``normbench.sweep``) the config
stands for one run per seed, and the runs still to train share one packed model
(``normbench.packed``). Each member keeps everything a run has alone: its run directory,
lock, config, TensorBoard folder, checkpoint and record; its record names its siblings in
``packed_with``. Members whose checkpoints are at different steps (one was resumed alone)
train as separate packs; a norm that cannot pack trains its runs one after the other.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

import normbench
from normbench import bn_eval
from normbench import data as datamod
from normbench.budget import period_steps
from normbench.checkpoints import AtomicCheckpointIO, PackCheckpointIO
from normbench.checks import check_batch_fits, check_config, steps_per_call
from normbench.derived import derive
from normbench.environment import PeakMemory, cpu_threads, device_name, git_rev, now
from normbench.errors import NormbenchError
from normbench.fingerprint import DataIdentity
from normbench.host_memory import keep_freed_memory
from normbench.models import Net, build_model
from normbench.module import Diverged, NormbenchModule
from normbench.norms import resolved_params
from normbench.norms.packing import NotPackable
from normbench.pack import pack_net
from normbench.packed import AllDiverged, PackedModule, PackLoader
from normbench.progress import RunProgress
from normbench.records import (
    CONFIG,
    FINISHED,
    INTERRUPTED,
    config_hash,
    experiment_config,
    norm_tag,
    read_record,
    run_key,
    run_lock,
    write_record,
    write_text_atomic,
)
from normbench.rundir import Resume, make_run_dir, read_attempts, resume_checkpoint, start_attempt
from normbench.splits import data_identity, prepare_data, validation_split

log = logging.getLogger("normbench")


def log_hparams(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """Fill TensorBoard's HPARAMS tab: ``params`` against the test accuracy and loss curves.

    Written by hand because ``TensorBoardLogger.log_hyperparams(params, metrics)`` also logs
    the metrics' placeholder values at step 0, a fake point on every curve.
    """
    from torch.utils.tensorboard.summary import hparams

    exp, ssi, sei = hparams(params, {"accuracy/test": 0.0, "loss/test": 0.0})
    writer = logger.experiment._get_file_writer()
    for summary in (exp, ssi, sei):
        writer.add_summary(summary)


@dataclass
class Member:
    """One run of a pack: its config (seed set), identity and folder."""

    c: dict[str, Any]
    experiment: dict[str, Any]
    key: str
    run_dir: Path | None = None
    model: Net | None = None
    resume: Resume | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.c["seed"]

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint to resume from, for Lightning's ``ckpt_path`` (None: from scratch)."""
        return self.resume.path if self.resume else None

    @property
    def ckpt(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "ckpt" / "last.ckpt"


def member_config(c: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config of the run with ``seed`` in a pack: the pack's, with its own seed."""
    out = copy.deepcopy(c)
    out["seed"] = seed
    out["trainer"]["pack_seeds"] = None
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one config into its run directory and return its record (for a pack, the
    members' records under ``runs``)."""
    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    check_config(c)
    identity = data_identity(c)
    check_batch_fits(c, identity)
    seeds = c["trainer"].get("pack_seeds")
    if seeds:
        return run_pack(c, identity, list(dict.fromkeys(seeds)))
    member = _member(c, identity)
    previous = read_record(Path(c["paths"]["runs"]) / member.key)
    if previous and previous.get("status") in FINISHED:
        return skip_finished(previous)
    _process_settings(c)
    # Data, batch size and model are checked before the runs folder is touched: a bad
    # config leaves nothing behind. The seed comes first: it fixes the model's initial weights.
    splits = prepare_data(c)
    member.model = _seeded_model(c, member, splits[0])
    member.run_dir = make_run_dir(Path(c["paths"]["runs"]), member.key)
    with run_lock(member.run_dir) as holder:
        if holder:
            log.info("skip %s: running in another process (%s)", member.key, holder)
            return {"run_key": member.key, "status": "running elsewhere"}
        previous = read_record(member.run_dir)  # it may have finished while we waited to get here
        if previous and previous.get("status") in FINISHED:
            return skip_finished(previous)
        member.resume = resume_checkpoint(member.ckpt)
        return _train(member, identity, splits)


def run_pack(c: dict[str, Any], identity: DataIdentity, seeds: list[int]) -> dict[str, Any]:
    """Train the runs of ``c`` at ``seeds`` (module docstring); returns ``{"runs": records}``."""
    runs = Path(c["paths"]["runs"])
    members, records = [], []
    for seed in seeds:
        m = _member(member_config(c, seed), identity)
        previous = read_record(runs / m.key)
        if previous and previous.get("status") in FINISHED:
            records.append(skip_finished(previous))
        else:
            members.append(m)
    if not members:
        return {"status": "pack", "runs": records}
    _process_settings(c)
    splits = prepare_data(c)
    for m in members:
        m.model = _seeded_model(m.c, m, splits[0])
    members_packable = len(members) > 1 and _packable(c, members)
    for m in members:
        m.run_dir = make_run_dir(runs, m.key)
    with contextlib.ExitStack() as locks:
        todo = []
        for m in members:
            holder = locks.enter_context(run_lock(m.run_dir))
            previous = read_record(m.run_dir)
            if holder:
                log.info("skip %s: running in another process (%s)", m.key, holder)
                records.append({"run_key": m.key, "status": "running elsewhere"})
            elif previous and previous.get("status") in FINISHED:
                records.append(skip_finished(previous))
            else:
                m.resume = resume_checkpoint(m.ckpt)
                todo.append(m)
        if len(todo) < 2 or not members_packable:
            records += [_train(m, identity, splits) for m in todo]
            return {"status": "pack", "runs": records}
        # Members resume together only from checkpoints of the same step.
        groups: dict[tuple, list[Member]] = {}
        for m in todo:
            groups.setdefault(m.resume.step if m.resume else (0, 0), []).append(m)
        for group in groups.values():
            if len(group) == 1:
                records.append(_train(group[0], identity, splits))
            else:
                records += _train_pack(group, identity, splits)
    return {"status": "pack", "runs": records}


# --- helpers shared by a run and a pack -------------------------------------------------------


def _member(c: dict[str, Any], identity: DataIdentity) -> Member:
    experiment = experiment_config(c, identity.fingerprint)
    return Member(c=c, experiment=experiment, key=run_key(experiment))


def skip_finished(previous: dict[str, Any]) -> dict[str, Any]:
    """Say that a run is skipped because its record says it finished; return that record."""
    log.info("skip %s: already finished (%s, test_acc %s)", previous.get("run_key"), previous.get("status"),
             derive(previous.get("history") or [])["test_acc"])
    return previous


def _process_settings(c: dict[str, Any]) -> None:
    """torch's CPU threads (``trainer.threads``) and malloc's keeping of freed memory
    (``normbench.host_memory``): settings of the process, made before it trains."""
    threads = cpu_threads(c["trainer"].get("threads"))
    if threads:
        torch.set_num_threads(threads)
    keep_freed_memory()


def _seeded_model(c: dict[str, Any], m: Member, ds: datamod.Dataset) -> Net:
    L.seed_everything(c["seed"], workers=False, verbose=False)
    return build_model(c["model"], m.experiment["norm"], ds.image_shape, ds.num_classes, batch_size=c["batch_size"])


def _packable(c: dict[str, Any], members: list[Member]) -> bool:
    """Whether these members can share a step; if not, the reason is logged once."""
    if c["trainer"].get("cuda_graphs"):
        reason = "packs do not capture CUDA graphs yet"
    else:
        try:
            pack_net([m.model for m in members[:2]])  # type: ignore[misc]
            return True
        except NotPackable as err:
            reason = str(err)
    log.info("%d runs of norm %s train one after the other, not packed: %s", len(members),
             norm_tag(members[0].experiment["norm"]), reason)
    return False


def _trainer(c: dict[str, Any], ckpt_dir: Path, logger: Any, plugins: list[Any], label: str) -> L.Trainer:
    t = c["trainer"]
    callbacks: list[Any] = [ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                            enable_version_counter=False, save_on_train_epoch_end=True)]
    progress = t.get("progress", "auto")
    show_bar = progress == "rich" or (progress == "auto" and sys.stdout.isatty())
    if show_bar:
        callbacks.append(RunProgress(label))
    return L.Trainer(
        accelerator=t["accelerator"], devices=t["devices"], precision=t["precision"], max_epochs=c["epochs"],
        logger=logger, callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=t.get("deterministic", False), default_root_dir=str(ckpt_dir.parent),
        plugins=plugins,
    )


def _compile(model: torch.nn.Module, c: dict[str, Any]) -> torch.nn.Module:
    if not c["trainer"].get("cuda_graphs"):
        return model
    # Small batches on a GPU are bound by kernel launches; CUDA graphs replay the whole
    # forward+backward as one launch. torch.compile's cudagraph trees keep BN's buffer
    # updates inside the graph; the optimizer and lr schedule stay eager, so they are
    # exactly as without capture. Train batches have one shape (drop_last). The runs of a
    # sweep share a process and their layers share code objects: without a reset, dynamo's
    # recompile limit (8) is reached after a few runs and later runs silently go eager
    # (seen on an H200: docs/measurements/h200_gpu_newer_norms.log).
    torch._dynamo.reset()
    return torch.compile(model, mode="reduce-overhead")


def _input_stats(c: dict[str, Any], ds: datamod.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = ds.channel_stats()
    if c["data"].get("normalize", "meanstd") == "mean":
        # Subtract the per-channel mean and keep the 0-255 scale, as Caffe and cuda-convnet fed
        # their nets: DeviceLoader computes (x / 255 - mean) / std, which is x - 255 * mean
        # for std = 1/255.
        std = torch.full_like(std, 1 / 255)
    return mean, std


def _train_loader(c: dict[str, Any], splits: tuple, seed: int, device: torch.device,
                  fmt: torch.memory_format) -> datamod.DeviceLoader:
    ds, train_x, train_y, _, _ = splits
    mean, std = _input_stats(c, ds)
    return datamod.DeviceLoader(train_x, train_y, c["batch_size"], mean, std, augment=c["data"]["augment"],
                                shuffle=True, drop_last=True, seed=seed, device=device, memory_format=fmt,
                                batches_per_item=steps_per_call(c["trainer"].get("steps_per_call", "auto"),
                                                                c["batch_size"]),
                                period=period_steps(c))


def _test_loader(c: dict[str, Any], splits: tuple, device: torch.device,
                 fmt: torch.memory_format) -> datamod.DeviceLoader:
    ds, _, _, test_x, test_y = splits
    mean, std = _input_stats(c, ds)
    return datamod.DeviceLoader(test_x, test_y, c["data"]["eval_batch_size"], mean, std, device=device,
                                memory_format=fmt)


def _eval_loaders(c: dict[str, Any], splits: tuple, device: torch.device, fmt: torch.memory_format
                  ) -> tuple[tuple[str, ...], list[datamod.DeviceLoader]]:
    """What every epoch evaluates: the test split, or the validation split and the test split."""
    test = _test_loader(c, splits, device, fmt)
    val = validation_split(c)
    if val is None:
        return ("test",), [test]
    mean, std = _input_stats(c, splits[0])
    return ("val", "test"), [datamod.DeviceLoader(*val, c["data"]["eval_batch_size"], mean, std, device=device,
                                                  memory_format=fmt), test]


PRECISE_PASS = 1_000_000  # the data pass PreciseBN draws its training images from


def _bn_eval(c: dict[str, Any], model: torch.nn.Module, splits: tuple, seed: int, device: torch.device,
             fmt: torch.memory_format, precision: Any) -> dict[str, Any] | None:
    """The final weights evaluated with PreciseBN and with batch statistics (``normbench.bn_eval``),
    for a network with batch-dependent norms; None for one without. ``precision`` is the
    trainer's precision plug-in: the same autocast (``*-mixed``) or dtype (``*-true``) as the
    run's own evaluation, so that the three accuracies differ only in their statistics. The
    run is over and its record not yet written: an error here is said and recorded as null,
    never a lost run."""
    b = bn_eval.stat_batch(model, c["batch_size"])
    if b is None:
        return None
    try:
        with precision.forward_context():  # a pack's member is rebuilt from its float32 template: convert it too
            return _bn_eval_at(c, precision.convert_module(model), splits, seed, device, fmt,
                               precision.convert_input, b)
    except Exception as err:  # noqa: BLE001 - the trained run matters more than its extra evaluation
        log.warning("bn_eval failed (%s: %s): the record's bn_eval is null", type(err).__name__, err)
        return None


def _bn_eval_at(c: dict[str, Any], model: torch.nn.Module, splits: tuple, seed: int, device: torch.device,
                fmt: torch.memory_format, convert: Any, b: int) -> dict[str, Any]:
    test = _test_loader(c, splits, device, fmt)
    xs, ys = zip(*test)
    images, labels = convert(torch.cat(xs)), torch.cat(ys)
    out: dict[str, Any] = {"stat_batch": b, "batch_acc": bn_eval.batch_stat_accuracy(model, images, labels, b),
                           "precise_acc": None, "precise_images": None}
    if bn_eval.precise_bn_supported(model):
        ds, train_x, train_y, _, _ = splits
        mean, std = _input_stats(c, ds)
        # The run's own augmentation and batch, from a pass of its own seed that training never
        # reaches (pass PRECISE_PASS), so the images are a fresh draw, not the last epoch's order.
        train = datamod.DeviceLoader(train_x, train_y, c["batch_size"], mean, std, augment=c["data"]["augment"],
                                     shuffle=True, drop_last=True, seed=seed, device=device, memory_format=fmt)
        train.sampler.set_epoch(PRECISE_PASS)
        net, seen = bn_eval.precise_bn(model, (convert(x) for x, _ in train),
                                       c.get("precise_bn_images", bn_eval.PRECISE_IMAGES))
        out.update(precise_acc=bn_eval.accuracy(net, images, labels, c["data"]["eval_batch_size"]),
                   precise_images=seen)
    return out




def _signal_of(err: SystemExit) -> int | None:
    """The signal that ended ``trainer.fit``, or None for any other exit: Lightning turns
    SIGTERM into ``SIGTERMException`` (a SystemExit with code 0) and Ctrl-C (SIGINT) into
    ``sys.exit(1)`` raised while handling the KeyboardInterrupt."""
    if isinstance(err, SIGTERMException):
        return signal.SIGTERM
    if isinstance(err.__context__, KeyboardInterrupt):
        return signal.SIGINT
    return None


def _interrupted(members: list[Member], signum: int) -> SystemExit:
    """Mark each member's folder ``interrupted`` (no record: relaunching resumes from its last
    checkpoint) and return the exit a shell reports for the signal: 128 + its number (SIGTERM
    143, SIGINT 130), so that ``train && report`` and schedulers see the run did not finish."""
    name = signal.Signals(signum).name
    for m in members:
        assert m.run_dir is not None
        write_text_atomic(m.run_dir / INTERRUPTED, json.dumps({"signal": name, "at": now()}) + "\n")
        log.warning("%s interrupted by %s: no record written; launch the same command again to resume from its "
                    "last checkpoint", m.key, name)
    return SystemExit(128 + signum)


def _start(m: Member) -> tuple[TensorBoardLogger, int]:
    """Write the run's config, count this launch among its attempts and open its TensorBoard
    folder; returns the logger and the attempt's number."""
    assert m.run_dir is not None
    (m.run_dir / INTERRUPTED).unlink(missing_ok=True)  # a relaunch resumes it
    write_text_atomic(m.run_dir / CONFIG, OmegaConf.to_yaml(OmegaConf.create(m.c), resolve=True))
    from_epoch = m.resume.epochs_done if m.resume else 0
    attempt = start_attempt(m.run_dir, from_epoch=from_epoch)
    # A launch killed after logging an epoch but before checkpointing it left that epoch in
    # TensorBoard, and this launch trains it again. TensorBoard's purge marker (SummaryWriter's
    # purge_step) hides every earlier event from the first epoch this launch logs on, so each
    # epoch shows once, with the values the record holds.
    purge = {"purge_step": from_epoch + 1} if attempt > 1 else {}
    return TensorBoardLogger(save_dir=str(m.run_dir), name="tb", version="", default_hp_metric=False,
                             **purge), attempt


def _record(m: Member, identity: DataIdentity, trainer: L.Trainer, lr: float) -> dict[str, Any]:
    """The facts a run's record holds from its start (docs/records.md)."""
    c, d, device = m.c, m.c["data"], trainer.strategy.root_device
    assert m.model is not None
    placed = sorted(m.model.norms())  # the norm layers actually in the network, "<site>.<position>"
    return {
        "run_key": m.key, "config_hash": config_hash(m.experiment), "config": m.experiment, "dataset": d["name"],
        "data_fingerprint": identity.fingerprint, "train_images": identity.train_images - (d.get("val_size") or 0),
        "val_images": d.get("val_size") or None, "test_images": identity.test_images, "model": c["model"]["name"],
        "norm": m.experiment["norm"]["name"], "norm_tag": norm_tag(m.experiment["norm"]),
        "norm_params": resolved_params(m.experiment["norm"]),
        "norm_sites": placed, "placement": m.model.placement if placed else None,
        "batch_size": c["batch_size"], "stat_batch": bn_eval.stat_batch(m.model, c["batch_size"]), "lr": lr, "base_lr": c["optim"]["base_lr"], "epochs": c["epochs"],
        "seed": c["seed"], "augment": d["augment"], "target_acc": c.get("target_acc"),
        "params": sum(p.numel() for p in m.model.parameters()),
        "device": device_name(device), "accelerator": device.type, "precision": str(trainer.precision),
        "torch": torch.__version__, "lightning": L.__version__, "normbench": normbench.__version__,
        "git_rev": git_rev(), "started_at": now(),
    }


def _hparams(m: Member, logger: TensorBoardLogger, lr: float) -> None:
    c = m.c
    log_hparams(logger, {"norm": norm_tag(m.experiment["norm"]), "model": c["model"]["name"],
                         "batch_size": c["batch_size"], "seed": c["seed"], "lr": lr, "dataset": c["data"]["name"]})


def _finish(m: Member, history: list[dict[str, Any]], t0: float, memory: PeakMemory, **outcome: Any) -> dict[str, Any]:
    assert m.run_dir is not None
    peak_mb, peak_kind = memory.read()
    m.record.update(outcome, history=history, total_s=time.perf_counter() - t0, peak_mem_mb=peak_mb,
                    peak_mem_kind=peak_kind, finished_at=now(), attempts=read_attempts(m.run_dir))
    record = write_record(m.run_dir, m.record)
    log.info("%s %s: test_acc %s -> %s", record["status"], m.key, derive(history)["test_acc"],
             m.run_dir / "record.json")
    return record


# --- one run ---------------------------------------------------------------------------------


def _train(m: Member, identity: DataIdentity, splits: tuple) -> dict[str, Any]:
    c, t = m.c, m.c["trainer"]
    assert m.model is not None and m.run_dir is not None
    logger, attempt = _start(m)
    trainer = _trainer(c, m.run_dir / "ckpt", logger, [AtomicCheckpointIO()], "/".join(m.key.split("/")[2:]))
    device = trainer.strategy.root_device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 convs/matmuls: the usual GPU setting
    fmt = torch.channels_last if t.get("channels_last") else torch.contiguous_format
    model = m.model.to(memory_format=fmt)
    train_loader = _train_loader(c, splits, c["seed"], device, fmt)
    module = NormbenchModule(_compile(model, c), c["optim"], c["batch_size"], c["epochs"], train_loader.num_batches,
                             t.get("check_every_n_steps", 50), memory_format=fmt,
                             steps_per_pass=train_loader.batches_per_pass)
    module.attempt = attempt
    _hparams(m, logger, module.lr)
    m.record = _record(m, identity, trainer, module.lr)
    module.eval_splits, eval_loaders = _eval_loaders(c, splits, device, fmt)
    if m.checkpoint:
        log.info("resume %s from %s", m.key, m.checkpoint)
    memory = PeakMemory(device)
    t0 = time.perf_counter()
    outcome: dict[str, Any] = {"status": "ok"}
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=eval_loaders,
                    ckpt_path=m.checkpoint, weights_only=True)
    except Diverged as err:
        outcome = {"status": "diverged", "diverged_at_step": err.step, "error": str(err)}
        log.warning("%s diverged: %s", m.key, err)
    except SystemExit as err:
        signum = _signal_of(err)
        if signum is None:
            raise
        raise _interrupted([m], signum) from None
    except NormbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any training error is recorded; the sweep goes on
        outcome = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        log.exception("%s failed", m.key)
    if outcome["status"] == "ok":
        outcome["bn_eval"] = _bn_eval(c, m.model, splits, c["seed"], device, fmt, trainer.precision_plugin)
    return _finish(m, module.history, t0, memory, **outcome)


# --- a pack ------------------------------------------------------------------------------------


def _train_pack(members: list[Member], identity: DataIdentity, splits: tuple) -> list[dict[str, Any]]:
    c, t, k = members[0].c, members[0].c["trainer"], len(members)
    loggers, attempts = map(list, zip(*[_start(m) for m in members]))
    packed = pack_net([m.model for m in members])  # type: ignore[misc]
    finished: dict[int, dict[str, Any]] = {}
    io = PackCheckpointIO(packed, [m.ckpt for m in members], writes=lambda i: i not in finished)
    assert members[0].run_dir is not None
    trainer = _trainer(c, members[0].run_dir / "ckpt", False, [io],
                       f"{'/'.join(members[0].key.split('/')[2:4])}/seeds {','.join(str(m.seed) for m in members)}")
    device = trainer.strategy.root_device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    # A pack computes in channels_last on the CPU too: its grouped convs run 1.5-1.9x faster
    # that way on the 2-core CPU (docs/measurements/cpu_pack.csv), and a pack's numbers already
    # differ from an unpacked run's by the order of additions only.
    fmt = torch.channels_last if (t.get("channels_last") or device.type == "cpu") else torch.contiguous_format
    model = packed.to(memory_format=fmt)
    loader = PackLoader([_train_loader(m.c, splits, m.seed, device, fmt) for m in members])
    memory = PeakMemory(device)
    t0 = time.perf_counter()

    def diverged(i: int, err: Diverged) -> None:
        log.warning("%s diverged: %s (the rest of its pack goes on)", members[i].key, err)
        finished[i] = _finish(members[i], module.histories[i], t0, memory, status="diverged",
                              diverged_at_step=err.step, error=str(err))

    module = PackedModule(model, c["optim"], c["batch_size"], c["epochs"], loader.num_batches,
                          t.get("check_every_n_steps", 50), memory_format=fmt, loggers=loggers, on_diverged=diverged,
                          steps_per_pass=loader.loaders[0].batches_per_pass)
    module.attempts = attempts
    keys = [m.key for m in members]
    for m, logger in zip(members, loggers):
        _hparams(m, logger, module.lr)
        m.record = _record(m, identity, trainer, module.lr)
        m.record["packed_with"] = [key for key in keys if key != m.key]
    module.eval_splits, eval_loaders = _eval_loaders(c, splits, device, fmt)
    if members[0].checkpoint:
        log.info("resume a pack of %d from their checkpoints (%s, ...)", k, members[0].checkpoint)
    log.info("pack of %d runs in one model: %s", k, ", ".join(keys))
    outcome: dict[str, Any] = {"status": "ok"}
    try:
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=eval_loaders,
                    ckpt_path=members[0].checkpoint, weights_only=True)
    except AllDiverged:
        pass
    except SystemExit as err:
        signum = _signal_of(err)
        if signum is None:
            raise
        raise _interrupted([m for i, m in enumerate(members) if i not in finished], signum) from None
    except NormbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - recorded for every member still training
        outcome = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        log.exception("pack %s failed", ", ".join(keys))
    for logger in loggers:
        logger.finalize("success")
    for i, m in enumerate(members):
        if i not in finished:
            extra: dict[str, Any] = {}
            if outcome["status"] == "ok":
                net = copy.deepcopy(packed.template).to(device)
                net.load_state_dict(packed.member_state(i))
                extra["bn_eval"] = _bn_eval(m.c, net.to(memory_format=fmt), splits, m.seed, device, fmt,
                                            trainer.precision_plugin)
            finished[i] = _finish(m, module.histories[i], t0, memory, **outcome, **extra)
    return [finished[i] for i in range(k)]
