"""Hydra entry point: one config -> one run directory (docs/records.md).

``run(cfg)`` validates the config, skips a finished run, resumes an unfinished one from
``ckpt/last.ckpt``, trains with Lightning, and writes ``record.json`` atomically with status
``ok``, ``diverged`` or ``failed``. Errors a user can fix (bad config, missing data, an
unwritable folder) end in one line and leave no record.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

import normbench
from normbench import data as datamod
from normbench import fingerprint
from normbench.derived import derive
from normbench.errors import ConfigError, NormbenchError
from normbench.models import Net, build_model
from normbench.module import Diverged, NormbenchModule, check_optim
from normbench.norms import TRAITS, resolved_params
from normbench.records import (CONFIG, FINISHED, config_hash, experiment_config, norm_tag, read_record, run_key,
                               run_lock, write_record, write_text_atomic)

log = logging.getLogger("normbench")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _quiet_lightning() -> None:
    """Drop two lines of Lightning's output that say nothing about the run: an advert for a
    cloud logger, and a deprecation inside Lightning itself (its use of torch's LeafSpec)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")  # we log per epoch
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")  # resume


_quiet_lightning()


# --- config checks ---------------------------------------------------------------------------


def _int_at_least(key: str, low: int, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r} is not valid; allowed: an integer >= {low}")
    return value


def check_config(c: dict[str, Any]) -> None:
    """Checks that need no data or model: fail in one line before anything is loaded."""
    _int_at_least("batch_size", 1, c.get("batch_size"))
    _int_at_least("epochs", 1, c.get("epochs"))
    _int_at_least("seed", 0, c.get("seed"))
    d = c["data"]
    datamod.dataset_spec(d["name"])
    if d.get("normalize", "meanstd") not in datamod.NORMALIZATIONS:
        raise ConfigError(f"data.normalize={d['normalize']!r} is not valid; allowed: {' | '.join(datamod.NORMALIZATIONS)}")
    if d["augment"] not in datamod.AUGMENTS:
        raise ConfigError(f"data.augment={d['augment']!r} is not valid; allowed: {' | '.join(datamod.AUGMENTS)}")
    for key in ("train_size", "test_size"):
        if d.get(key) is not None:
            _int_at_least(f"data.{key}", 1, d[key])
    _int_at_least("data.eval_batch_size", 1, d.get("eval_batch_size"))
    check_optim(c["optim"])
    if c["trainer"].get("cuda_graphs"):
        norm = c["norm"].get("name")
        if norm in TRAITS and not TRAITS[norm].cuda_graphs:
            raise ConfigError(f"trainer.cuda_graphs=true does not work with norm={norm}: it reads a step counter on "
                              f"the host every step, which breaks the graphs (2-3x slower than eager, measured); "
                              f"drop trainer.cuda_graphs")
        on_cpu = c["trainer"]["accelerator"] == "cpu" or not torch.cuda.is_available()
        if on_cpu:
            raise ConfigError("trainer.cuda_graphs=true needs a CUDA GPU and this run would be on the CPU; "
                              "drop trainer.cuda_graphs or run on a GPU")
    stat_batch = c["norm"].get("stat_batch")
    if isinstance(stat_batch, int) and not isinstance(stat_batch, bool) and stat_batch >= 1 \
            and c["batch_size"] % stat_batch:
        raise ConfigError(f"norm.stat_batch={stat_batch} is not valid with batch_size={c['batch_size']}; allowed: "
                          f"a divisor of the batch size")
    steps_per_call(c["trainer"].get("steps_per_call", "auto"), c["batch_size"])
    progress = c["trainer"].get("progress", "auto")
    if progress not in ("auto", "rich", "none"):
        raise ConfigError(f"trainer.progress={progress!r} is not valid; allowed: auto | rich | none")


# --- data ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cached_dataset(name: str, root: str, download: bool) -> datamod.Dataset:
    # A sweep runs its jobs in one process: read the files once, not once per run.
    return datamod.load_dataset(name, root, allow_download=download)


def data_identity(c: dict[str, Any]) -> fingerprint.DataIdentity:
    """The fingerprint and split sizes of the data this config trains and tests on, from the
    cache when the source files are unchanged (no data read), else computed and cached."""
    d = c["data"]
    spec, root = datamod.dataset_spec(d["name"]), Path(str(d["root"])).expanduser()
    subsetting = (d.get("train_size"), d.get("test_size"), d["subset_seed"])
    files = datamod.source_files(spec, root)
    if files:
        known = fingerprint.lookup(fingerprint.cache_key(d["name"], files, *subsetting))
        if known:
            return known
    ds = _cached_dataset(d["name"], str(d["root"]), bool(d["download"]))
    identity = fingerprint.digest(*datamod.select(ds, *subsetting))
    files = datamod.source_files(spec, root)  # present now, also after a download
    if files:
        fingerprint.store(fingerprint.cache_key(d["name"], files, *subsetting), identity)
    return identity


def check_batch_fits(c: dict[str, Any], identity: fingerprint.DataIdentity) -> None:
    if c["batch_size"] > identity.train_images:
        raise ConfigError(
            f"batch_size={c['batch_size']} is larger than the training split ({identity.train_images} images "
            f"of data.name={c['data']['name']} under data.root={c['data']['root']}); use a smaller batch_size "
            f"or a larger data.train_size"
        )


def prepare_data(c: dict[str, Any]) -> tuple[datamod.Dataset, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = c["data"]
    ds = _cached_dataset(d["name"], str(d["root"]), bool(d["download"]))
    return (ds, *datamod.select(ds, d.get("train_size"), d.get("test_size"), d["subset_seed"]))


# --- environment -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def git_rev() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class PeakMemory:
    """This run's peak memory: on CUDA, torch's peak allocation, its counter reset when the
    run starts (runs of one sweep share a process); on CPU, how much the process's peak
    resident size grew during the run. The CPU figure is a lower bound when an earlier run
    in the same process already reached a higher peak (the OS keeps one peak per process)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.start_rss = _peak_rss_mb()

    def read(self) -> tuple[float, str]:
        """(megabytes, ``peak_mem_kind``)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20, "cuda_max_allocated"
        return _peak_rss_mb() - self.start_rss, "cpu_peak_rss_growth"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- TensorBoard -----------------------------------------------------------------------------


def log_hparams(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """Fill TensorBoard's HPARAMS tab: ``params`` against hp/test_acc and hp/test_loss.

    Written by hand because ``TensorBoardLogger.log_hyperparams(params, metrics)`` also logs
    the metrics' placeholder values at step 0, a fake point on every curve.
    """
    from torch.utils.tensorboard.summary import hparams

    exp, ssi, sei = hparams(params, {"hp/test_acc": 0.0, "hp/test_loss": 0.0})
    writer = logger.experiment._get_file_writer()
    for summary in (exp, ssi, sei):
        writer.add_summary(summary)


# --- one run ---------------------------------------------------------------------------------


def _resume_checkpoint(path: Path) -> str | None:
    """``path`` when it is a checkpoint that loads with ``weights_only=True`` (tensors and plain
    containers only: a checkpoint is untrusted input, and a full unpickle would run whatever
    it names). Anything else is moved aside as ``last.ckpt.bad-<time>``, said in one line,
    and the run starts over."""
    if not path.is_file():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any checkpoint that cannot be loaded safely means: start over
        aside = path.with_name(f"{path.name}.bad-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}")
        path.replace(aside)
        log.warning("%s cannot be loaded safely (%s): moved aside to %s; starting this run from scratch", path,
                    type(err).__name__, aside.name)
        return None
    return str(path)


def make_run_dir(runs: Path, key: str) -> Path:
    run_dir = runs / key
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A probe of its own: with one shared name, two launches of a sweep deleted each
        # other's probe and one failed as "cannot be written".
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(
            f"paths.runs={str(runs)!r} cannot be written ({err.strerror}); set paths.runs to a writable folder"
        ) from None
    return run_dir


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train one config into its run directory and return its record."""
    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    check_config(c)
    identity = data_identity(c)
    check_batch_fits(c, identity)
    experiment = experiment_config(c, identity.fingerprint)
    key = run_key(experiment)
    runs = Path(c["paths"]["runs"])
    previous = read_record(runs / key)
    if previous and previous.get("status") in FINISHED:
        log.info("skip %s: already finished (%s, test_acc %s)", key, previous["status"],
                 derive(previous.get("history") or [])["test_acc"])
        return previous

    t = c["trainer"]
    threads = cpu_threads(t.get("threads"))
    if threads:
        torch.set_num_threads(threads)
    # Data, batch size and model are checked before the runs folder is touched: a bad
    # config leaves nothing behind. The seed comes first: it fixes the model's initial weights.
    splits = prepare_data(c)
    L.seed_everything(c["seed"], workers=False, verbose=False)
    model = build_model(c["model"], experiment["norm"], splits[0].image_shape, splits[0].num_classes,
                        batch_size=c["batch_size"])
    run_dir = make_run_dir(runs, key)
    with run_lock(run_dir) as holder:
        if holder:
            log.info("skip %s: running in another process (%s)", key, holder)
            return {"run_key": key, "status": "running elsewhere"}
        previous = read_record(run_dir)  # it may have finished while we waited to get here
        if previous and previous.get("status") in FINISHED:
            log.info("skip %s: already finished (%s)", key, previous["status"])
            return previous
        return _train(cfg, c, experiment, identity, key, run_dir, splits, model)


def steps_per_call(configured: Any, batch_size: int) -> int:
    """SGD steps per Lightning ``training_step`` call: ``auto`` takes enough batches to make
    128 images a call (batch 2: 64 steps, 32: 4, 128 and up: 1), which keeps Lightning's
    per-call cost (1-1.5 ms on a 2-core CPU) off the steps; the steps are the same either way."""
    if configured == "auto":
        return max(1, -(-128 // batch_size))
    if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
        raise ConfigError(f"trainer.steps_per_call={configured!r} is not valid; allowed: auto, or an integer >= 1")
    return configured


def cpu_threads(configured: Any) -> int | None:
    """torch's CPU threads for this run: ``trainer.threads``, else the launcher's
    ``cpus_per_task`` (each parallel job gets its share), else Slurm's, else torch's default."""
    if configured is not None:
        if isinstance(configured, bool) or not isinstance(configured, int) or configured < 1:
            raise ConfigError(f"trainer.threads={configured!r} is not valid; allowed: an integer >= 1, or null")
        return configured
    try:
        launcher = HydraConfig.get().launcher
        if launcher.get("cpus_per_task"):
            return int(launcher.cpus_per_task)
    except ValueError:  # not running under Hydra (a test or a library call)
        pass
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    return int(slurm) if slurm and slurm.isdigit() else None


def _train(cfg: DictConfig, c: dict[str, Any], experiment: dict[str, Any], identity: fingerprint.DataIdentity,
           key: str, run_dir: Path, splits: tuple, model: Net) -> dict[str, Any]:
    t = c["trainer"]
    ds, train_x, train_y, test_x, test_y = splits
    write_text_atomic(run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

    logger = TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False)
    ckpt_dir = run_dir / "ckpt"
    callbacks: list[Any] = [ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                                            enable_version_counter=False, save_on_train_epoch_end=True)]
    progress = t.get("progress", "auto")
    show_bar = progress == "rich" or (progress == "auto" and sys.stdout.isatty())
    if show_bar:
        callbacks.append(RichProgressBar(leave=False))
    trainer = L.Trainer(
        accelerator=t["accelerator"], devices=t["devices"], precision=t["precision"], max_epochs=c["epochs"],
        logger=logger, callbacks=callbacks, enable_progress_bar=show_bar, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=t.get("deterministic", False), default_root_dir=str(run_dir),
    )
    device = trainer.strategy.root_device
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 convs/matmuls: the usual GPU setting
    fmt = torch.channels_last if t.get("channels_last") else torch.contiguous_format
    model = model.to(memory_format=fmt)
    trained = model
    if t.get("cuda_graphs"):
        # Small batches on a GPU are bound by kernel launches; CUDA graphs replay the whole
        # forward+backward as one launch. torch.compile's cudagraph trees keep BN's buffer
        # updates inside the graph; the optimizer and lr schedule stay eager, so they are
        # exactly as without capture. Train batches have one shape (drop_last). The runs of a
        # sweep share a process and their layers share code objects: without a reset, dynamo's
        # recompile limit (8) is reached after a few runs and later runs silently go eager
        # (seen on an H200: docs/measurements/h200_gpu_newer_norms.log).
        torch._dynamo.reset()
        trained = torch.compile(model, mode="reduce-overhead")
    mean, std = ds.channel_stats()
    d = c["data"]
    if d.get("normalize", "meanstd") == "mean":
        # Subtract the per-channel mean and keep the 0-255 scale, as Caffe and cuda-convnet fed
        # their nets: DeviceLoader computes (x / 255 - mean) / std, which is x - 255 * mean
        # for std = 1/255.
        std = torch.full_like(std, 1 / 255)
    per_call = steps_per_call(t.get("steps_per_call", "auto"), c["batch_size"])
    train_loader = datamod.DeviceLoader(train_x, train_y, c["batch_size"], mean, std, augment=d["augment"],
                                        shuffle=True, drop_last=True, seed=c["seed"], device=device, memory_format=fmt,
                                        batches_per_item=per_call)
    test_loader = datamod.DeviceLoader(test_x, test_y, d["eval_batch_size"], mean, std, device=device, memory_format=fmt)
    module = NormbenchModule(trained, c["optim"], c["batch_size"], c["epochs"], train_loader.num_batches,
                             t.get("check_every_n_steps", 50), memory_format=fmt)
    tag = norm_tag(experiment["norm"])
    log_hparams(logger, {"norm": tag, "model": c["model"]["name"],
                         "batch_size": c["batch_size"], "seed": c["seed"], "lr": module.lr, "dataset": d["name"]})

    placed = sorted(model.norms())  # the norm layers actually in the network, "<site>.<position>"
    record: dict[str, Any] = {
        "run_key": key, "config_hash": config_hash(experiment), "config": experiment, "dataset": d["name"],
        "data_fingerprint": identity.fingerprint, "train_images": identity.train_images,
        "test_images": identity.test_images, "model": c["model"]["name"],
        "norm": experiment["norm"]["name"], "norm_tag": tag, "norm_params": resolved_params(experiment["norm"]),
        "norm_sites": placed, "placement": model.placement if placed else None,
        "batch_size": c["batch_size"], "lr": module.lr, "base_lr": c["optim"]["base_lr"], "epochs": c["epochs"],
        "seed": c["seed"], "augment": d["augment"], "target_acc": c.get("target_acc"),
        "params": sum(p.numel() for p in model.parameters()),
        "device": device_name(device), "accelerator": device.type, "precision": str(trainer.precision),
        "torch": torch.__version__, "lightning": L.__version__, "normbench": normbench.__version__,
        "git_rev": git_rev(), "started_at": now(),
    }
    resume = _resume_checkpoint(ckpt_dir / "last.ckpt")
    if resume:
        log.info("resume %s from %s", key, resume)
    memory = PeakMemory(device)
    t0 = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=test_loader, ckpt_path=resume,
                    weights_only=True)
        record["status"] = "ok"
    except Diverged as err:
        record.update(status="diverged", diverged_at_step=err.step, error=str(err))
        log.warning("%s diverged: %s", key, err)
    except NormbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - any training error is recorded; the sweep goes on
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
        log.exception("%s failed", key)
    peak_mb, peak_kind = memory.read()
    record.update(history=module.history, total_s=time.perf_counter() - t0, peak_mem_mb=peak_mb,
                  peak_mem_kind=peak_kind, finished_at=now())
    record = write_record(run_dir, record)
    log.info("%s %s: test_acc %s -> %s", record["status"], key, derive(module.history)["test_acc"],
             run_dir / "record.json")
    return record


# --- entry point -----------------------------------------------------------------------------


class SweepSummary(Callback):
    """Hydra callback: after a sweep, say where its runs are and how to look at them."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        value = getattr(job_return, "_return_value", None)
        self.statuses.append(value.get("status", "?") if isinstance(value, dict) else "error")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        runs = config.paths.runs
        counts = ", ".join(f"{self.statuses.count(s)} {s}" for s in dict.fromkeys(self.statuses))
        print(f"\nSweep done: {len(self.statuses)} runs ({counts}) under {runs}\n"
              f"  curves: tensorboard --logdir {runs}\n  tables: normbench report {runs}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return run(cfg)
    except NormbenchError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # `normbench train --verbose` sets it
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
