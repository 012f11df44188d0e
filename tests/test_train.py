"""The training path: configs compose, a run writes its directory, relaunch skips,
an interrupted run resumes, seeds reproduce, bad input fails in one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CIFAR10_SUBSET, make_cfg

from normbench import module as module_mod
from normbench.derived import derive
from normbench.errors import ConfigError, DataError
from normbench.records import FIELDS, HISTORY_FIELDS, experiment_config, read_record, run_key
from normbench.train import CONFIG_DIR, run


def final_acc(rec: dict) -> float:
    return derive(rec["history"])["test_acc"]


PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_sweeps(preset):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params, f"{preset} has no sweep"
    assert cfg.norm.name and cfg.model.name and cfg.batch_size >= 1


def test_presets_cover_the_studies():
    assert {"smoke", "ghost_bn", "gn_vs_bn", "gn_vs_bn_steps", "gn_vs_bn_resnet20", "lrn_ablation", "norm_zoo",
            "norm_zoo_small"} <= set(PRESETS)
    from hydra import compose, initialize_config_dir

    def preset(name):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=[f"experiment={name}"], return_hydra_config=True)

    params = preset("gn_vs_bn").hydra.sweeper.params
    assert params.batch_size == "2,4,8,16,32,64,128" and params.norm == "bn,gn" and params.seed == "0,1,2,3,4"
    for name in PRESETS:
        if name != "smoke":
            assert preset(name).hydra.sweeper.params.seed == "0,1,2,3,4", name  # five seeds: the statistics plan
    ghost = preset("ghost_bn")
    assert ghost.batch_size == 32 and ghost.hydra.sweeper.params.norm == "ghost_bn2,ghost_bn4,ghost_bn8,bn,gn,none"
    steps = preset("gn_vs_bn_steps")
    assert steps.budget.steps == 6000 and steps.budget.steps % steps.epochs == 0
    lrn = preset("lrn_ablation")
    assert lrn.data.normalize == "mean" and lrn.optim.base_lr == 0.001 and lrn.optim.base_batch == 100
    assert preset("gn_vs_bn_resnet20").model.name == "resnet20"


NORM_CONFIGS = sorted(p.stem for p in (CONFIG_DIR / "norm").glob("*.yaml"))


@pytest.mark.parametrize("norm", NORM_CONFIGS)
def test_every_norm_config_builds_on_every_model(norm):
    from normbench.models import build_model

    for model in ("convnet", "alexnet", "resnet20"):
        # LRN's configs name the convs its papers put it after (conv1, conv2): not resnet20's
        extra = ["norm.sites=all"] if model == "resnet20" and norm.startswith("lrn") else []
        cfg = make_cfg([f"norm={norm}", f"model={model}", *extra])
        net = build_model(cfg.model, cfg.norm, (3, 32, 32), 10, batch_size=2)
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_run_writes_record_config_tensorboard_and_checkpoint(quick):
    cfg = quick("norm=gn")
    rec = run(cfg)
    run_dir = Path(cfg.paths.runs) / rec["run_key"]
    resolved = __import__("omegaconf").OmegaConf.to_container(cfg, resolve=True)
    assert rec["run_key"] == run_key(experiment_config(resolved, rec["data_fingerprint"]))
    assert rec["config"] == experiment_config(resolved, rec["data_fingerprint"])
    assert rec["config"]["optim"]["base_lr"] == 0.02 and "root" not in rec["config"]["data"]
    assert rec["train_images"] == 320 and rec["test_images"] == 128 and len(rec["data_fingerprint"]) == 16
    assert rec["norm_sites"] == ["conv1.pre_act", "conv2.pre_act", "conv3.pre_act"]
    assert rec["peak_mem_kind"] == "cpu_peak_rss_growth" and rec["peak_mem_mb"] >= 0
    assert run_dir.relative_to(cfg.paths.runs).parts[:4] == ("cifar10", "convnet", "gn", "bs32")
    on_disk = json.loads((run_dir / "record.json").read_text())
    assert set(FIELDS) <= set(on_disk)
    assert on_disk["status"] == "ok" and on_disk["epochs"] == 2 and len(on_disk["history"]) == 2
    assert all(set(HISTORY_FIELDS) <= set(h) for h in on_disk["history"])
    assert "test_acc" not in on_disk  # derived numbers are computed from the history, not stored
    assert on_disk["norm_params"] == {"groups": 8, "eps": 1e-5, "affine": True}
    assert on_disk["placement"] == "pre_act"
    assert on_disk["lr"] == pytest.approx(0.02) and derive(on_disk["history"])["train_images_per_s"] > 0
    assert (run_dir / "config.yaml").read_text().startswith("batch_size: 32")
    assert (run_dir / "ckpt" / "last.ckpt").is_file()
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert sorted(scalars) == ["accuracy/test", "accuracy/train", "loss/test", "loss/train", "lr/lr", "time/epoch_s"]
    assert [e.step for e in acc.Scalars("accuracy/test")] == [1, 2]  # logged per epoch
    assert [e.value for e in acc.Scalars("accuracy/test")] == pytest.approx([h["test_acc"] for h in on_disk["history"]])
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins


def test_synthetic_data_is_learned(quick):
    rec = run(quick("norm=bn", "epochs=3"))
    assert final_acc(rec) > 0.5, rec["history"]


def test_relaunch_skips_a_finished_run(quick, caplog):
    cfg = quick("norm=none")
    first = run(cfg)
    path = Path(cfg.paths.runs) / first["run_key"] / "record.json"
    stamp = path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="normbench"):
        again = run(cfg)
    assert again == read_record(path.parent)
    assert path.stat().st_mtime_ns == stamp
    assert any(m.startswith(f"skip {first['run_key']}: already finished (ok") for m in caplog.messages)


class Interrupt(BaseException):
    """Stands in for a kill: not an Exception, so no record is written."""


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(quick, monkeypatch, tmp_path):
    reference = run(quick("norm=bn", "epochs=3", f"paths.runs={tmp_path / 'ref'}"))

    original = module_mod.NormbenchModule.on_train_epoch_start

    def crash_in_epoch_two(self):
        if self.current_epoch == 1:
            raise Interrupt()
        original(self)

    cfg = quick("norm=bn", "epochs=3")
    monkeypatch.setattr(module_mod.NormbenchModule, "on_train_epoch_start", crash_in_epoch_two)
    with pytest.raises(Interrupt):
        run(cfg)
    run_dir = Path(cfg.paths.runs) / reference["run_key"]
    assert (run_dir / "ckpt" / "last.ckpt").is_file() and read_record(run_dir) is None
    monkeypatch.setattr(module_mod.NormbenchModule, "on_train_epoch_start", original)
    resumed = run(cfg)
    assert resumed["status"] == "ok" and [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for a, b in zip(resumed["history"], reference["history"], strict=True):
        assert (a["train_loss"], a["test_acc"], a["lr"]) == (b["train_loss"], b["test_acc"], b["lr"])


def test_truncated_checkpoint_restarts_from_scratch(quick):
    cfg = quick("norm=none", "epochs=1")
    rec = run(cfg)
    run_dir = Path(cfg.paths.runs) / rec["run_key"]
    (run_dir / "record.json").unlink()
    ckpt = run_dir / "ckpt" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    again = run(cfg)
    assert again["status"] == "ok" and final_acc(again) == final_acc(rec)


def test_same_seed_same_numbers_on_cpu(quick, tmp_path):
    a = run(quick("norm=lrn_within", "seed=3", f"paths.runs={tmp_path / 'a'}"))
    b = run(quick("norm=lrn_within", "seed=3", f"paths.runs={tmp_path / 'b'}"))
    c = run(quick("norm=lrn_within", "seed=4", f"paths.runs={tmp_path / 'c'}"))
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert final_acc(a) == final_acc(b)
    assert [h["train_loss"] for h in a["history"]] != [h["train_loss"] for h in c["history"]]


def test_several_steps_per_call_train_exactly_the_same(quick, tmp_path):
    # batch 4: `auto` stacks 8 batches per Lightning call; the SGD steps must not change.
    per_step = run(quick("norm=bn", "batch_size=4", "trainer.steps_per_call=1", f"paths.runs={tmp_path / 'a'}"))
    stacked = run(quick("norm=bn", "batch_size=4", f"paths.runs={tmp_path / 'b'}"))
    odd = run(quick("norm=bn", "batch_size=4", "trainer.steps_per_call=7", f"paths.runs={tmp_path / 'c'}"))
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    for a, b, c in zip(per_step["history"], stacked["history"], odd["history"], strict=True):
        assert [a[k] for k in keys] == [b[k] for k in keys] == [c[k] for k in keys]
    assert per_step["run_key"] == stacked["run_key"]  # the same experiment: same run directory name


def test_divergence_is_recorded_and_does_not_raise(quick):
    rec = run(quick("norm=none", "optim.base_lr=1e6", "trainer.check_every_n_steps=1"))
    assert rec["status"] == "diverged"
    assert rec["diverged_at_step"] is not None and rec["diverged_at_step"] >= 0
    assert "non-finite training loss" in rec["error"]


def test_training_error_is_recorded_as_failed(quick, monkeypatch):
    def boom(self, batch, batch_idx):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(module_mod.NormbenchModule, "training_step", boom)
    rec = run(quick("norm=bn"))
    assert rec["status"] == "failed" and rec["error"] == "RuntimeError: CUDA out of memory (simulated)"


def test_lr_scaling_and_schedule():
    from normbench.optim import lr_factor, scaled_lr

    assert scaled_lr(0.1, 2, 32, "linear") == pytest.approx(0.1 * 2 / 32)
    assert scaled_lr(0.1, 128, 32, "sqrt") == pytest.approx(0.2)
    assert scaled_lr(0.1, 8, 32, "none") == 0.1
    assert lr_factor(0, 100, 0, "cosine", (), 0.1) == 1.0
    assert lr_factor(50, 100, 0, "cosine", (), 0.1) == pytest.approx(0.5)
    assert lr_factor(4, 100, 10, "cosine", (), 0.1) == pytest.approx(0.5)
    assert lr_factor(60, 100, 0, "multistep", (0.5, 0.75), 0.1) == pytest.approx(0.1)
    assert lr_factor(80, 100, 0, "multistep", (0.5, 0.75), 0.1) == pytest.approx(0.01)


# --- errors a user sees ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["batch_size=0"], "batch_size=0 is not valid; allowed: an integer >= 1"),
        (["batch_size=-4"], "batch_size=-4 is not valid; allowed: an integer >= 1"),
        (["batch_size=100000"], "batch_size=100000 is larger than the training split (320 images of data.name=cifar10"),
        (["epochs=0"], "epochs=0 is not valid; allowed: an integer >= 1"),
        (["norm=gn", "norm.groups=5"], "norm.groups=5 is not valid for norm 'gn'; allowed: a divisor of the 32 channels at this site (site conv1)"),
        (["norm=lrn", "norm.size=4", "norm.alpha_scaling=per_window"], "norm.size=4 is not valid for norm 'lrn'; allowed: an odd integer"),
        (["norm=bn", "norm.sites=[conv9]"], "norm.sites=['conv9'] names 'conv9', not a conv of model 'convnet'"),
        (["data.augment=mixup"], "data.augment='mixup' is not valid; allowed: none | flip | crop_flip"),
        (["optim.lr_scaling=cubic"], "optim.lr_scaling='cubic' is not valid; allowed: linear | sqrt | none"),
        (["model.width=0"], "model.width=0 is not valid; allowed: a number > 0"),
        (["trainer.cuda_graphs=true", "trainer.accelerator=cpu"],
         "trainer.cuda_graphs=true needs a CUDA GPU and this run would be on the CPU; drop trainer.cuda_graphs or run on a GPU"),
        (["trainer.cuda_graphs=true", "norm=pn"], "trainer.cuda_graphs=true does not work with norm=pn: it reads a step counter"),
        (["trainer.threads=0"], "trainer.threads=0 is not valid; allowed: an integer >= 1, or null"),
        (["trainer.steps_per_call=0"], "trainer.steps_per_call=0 is not valid; allowed: auto, or an integer >= 1"),
    ],
)
def test_bad_config_fails_before_training_in_one_line(quick, overrides, message):
    cfg = quick(*overrides)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not list(Path(cfg.paths.runs).rglob("record.json"))


def test_missing_data_names_the_files_expected(quick, tmp_path):
    with pytest.raises(DataError) as err:
        run(quick(f"data.root={tmp_path / 'empty'}"))
    text = str(err.value)
    assert "cifar10: files not found; expected" in text and "cifar-10-batches-py/{data_batch_1" in text
    assert "cifar-10-python.tar.gz" in text and "\n" not in text


def test_no_network_says_so(quick, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        run(quick(f"data.root={tmp_path / 'empty'}", "data.download=true"))
    assert "files not found and the download from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz failed" in str(err.value)
    assert "Temporary failure in name resolution" in str(err.value)


def test_cli_prints_one_line_and_exits_2(cifar_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "normbench.cli", "train", "norm=gn", "norm.groups=3", f"data.root={cifar_root}",
         f"paths.runs={tmp_path}", f"paths.logs={tmp_path / 'logs'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: norm.groups=3 is not valid for norm 'gn'; allowed: a divisor of the 32 channels at this site (site conv1)"]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even Hydra's log folder is left


def test_a_config_error_removes_only_the_log_folders_it_created(cifar_root, tmp_path):
    logs = tmp_path / "logs"
    (logs / "runs" / "an-earlier-run").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "normbench.cli", "train", "batch_size=100000", f"data.root={cifar_root}",
         f"paths.runs={tmp_path / 'runs'}", f"paths.logs={logs}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: batch_size=100000 is larger than the training")
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == [
        "logs", "logs/runs", "logs/runs/an-earlier-run"]


def test_cli_sweep_runs_every_config_and_says_where(cifar_root, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "normbench.cli", "train", "-m", "experiment=smoke", "norm=bn,none", "epochs=1",
         f"data.root={cifar_root}", f"paths.runs={tmp_path / 'runs'}", f"paths.logs={tmp_path / 'logs'}",
         "data.train_size=128", "data.test_size=64"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = sorted((tmp_path / "runs").rglob("record.json"))
    assert [r.parts[-4] for r in records] == ["bn", "none"]
    assert f"Sweep done: 2 runs (2 ok) under {tmp_path / 'runs'}" in proc.stdout
    assert f"tensorboard --logdir {tmp_path / 'runs'}" in proc.stdout


@pytest.mark.skipif(not CIFAR10_SUBSET, reason="NORMBENCH_CIFAR10_ROOT is not set (real CIFAR-10 data)")
def test_real_cifar10_bn_convnet_learns(tmp_path):
    cfg = make_cfg([f"data.root={CIFAR10_SUBSET}", "data.download=false", f"paths.runs={tmp_path}",
                    "model=convnet", "norm=bn", "batch_size=32", "epochs=2", "trainer.progress=none"])
    rec = run(cfg)
    assert rec["status"] == "ok"
    assert final_acc(rec) > 0.35, rec["history"]


@pytest.mark.skipif(not CIFAR10_SUBSET, reason="NORMBENCH_CIFAR10_ROOT is not set (real CIFAR-10 data)")
@pytest.mark.parametrize("overrides", [
    ["norm=bn", "norm.stat_batch=2"], ["norm=gn", "budget.steps=32", "epochs=2"], ["model=resnet20", "norm=gn"],
    ["data.normalize=mean", "norm=lrn_within", "optim.base_lr=0.001"], ["data.val_size=100", "norm=bn"],
], ids=["ghost_bn", "budget", "resnet20", "normalize_mean", "val_size"])
def test_real_cifar10_the_design_keys_run(tmp_path, overrides):
    cfg = make_cfg([f"data.root={CIFAR10_SUBSET}", "data.download=false", f"paths.runs={tmp_path}",
                    "batch_size=32", "epochs=1", "data.train_size=640", "trainer.progress=none", *overrides])
    rec = run(cfg)
    assert rec["status"] == "ok" and 0 < final_acc(rec) <= 1, rec.get("error")
    if "norm=bn" in overrides:
        assert rec["bn_eval"]["precise_acc"] is not None and rec["bn_eval"]["batch_acc"] is not None


# Those whose wiring goes beyond the layer: CBN reads its conv, FRN replaces the ReLU, PN has
# its own autograd Function and counters, gn_ws sets a model key. Every layer's numbers,
# gradients and checkpointed state are tested in tests/test_newer_norms.py.
@pytest.mark.parametrize("norm", ["cbn", "frn", "pn", "gn_ws"])
def test_newer_norms_train_end_to_end(quick, norm):
    rec = run(quick(f"norm={norm}", "epochs=1", "batch_size=4", "data.train_size=48"))
    assert rec["status"] == "ok", rec.get("error")
    assert rec["norm_sites"] == ["conv1.pre_act", "conv2.pre_act", "conv3.pre_act"]
    assert 0 < final_acc(rec) <= 1
    if norm == "gn_ws":
        assert rec["norm_tag"] == "gn_ws" and rec["config"]["model"]["weight_std"] is True


def test_weight_std_false_keeps_existing_run_keys(quick):
    # model.weight_std was added after runs were recorded: at false it is left out of the hash.
    resolved = __import__("omegaconf").OmegaConf.to_container(quick("norm=gn"), resolve=True)
    assert resolved["model"]["weight_std"] is False
    without = json.loads(json.dumps(resolved))
    del without["model"]["weight_std"]
    assert run_key(experiment_config(resolved, "f" * 16)) == run_key(experiment_config(without, "f" * 16))


def test_mean_only_normalization_keeps_the_pixel_scale(quick, monkeypatch):
    from normbench import data as datamod

    seen = {}
    original = datamod.DeviceLoader.__init__

    def spy(self, images, labels, batch_size, mean, std, **kw):
        original(self, images, labels, batch_size, mean, std, **kw)
        seen.setdefault("loader", self)

    monkeypatch.setattr(datamod.DeviceLoader, "__init__", spy)
    rec = run(quick("norm=lrn_within", "data.normalize=mean", "epochs=1", "data.train_size=64"))
    assert rec["status"] == "ok" and rec["config"]["data"]["normalize"] == "mean"
    x, _ = next(iter(seen["loader"]))
    assert 20 < float(x.float().std()) < 128 and abs(float(x.float().mean())) < 30  # 0-255 scale, mean removed
    plain = run(quick("norm=lrn_within", "epochs=1", "data.train_size=64"))
    assert "normalize" not in plain["config"]["data"]  # the default is left out of the hash
    with pytest.raises(ConfigError, match="data.normalize='std' is not valid; allowed: meanstd | mean"):
        run(quick("data.normalize=std"))


def test_a_terminal_shows_one_bar_per_run_over_its_sgd_steps(quick, monkeypatch):
    import io

    from rich.console import Console

    from normbench import progress

    buf = io.StringIO()
    monkeypatch.setattr(progress, "Console", lambda **kw: Console(file=buf, force_terminal=True, width=200))
    monkeypatch.setattr(progress.RunProgress.__init__, "__defaults__", (0.0, None))  # refresh on every call
    rec = run(quick("trainer.progress=rich", "epochs=2", "batch_size=16", "trainer.steps_per_call=4"))
    assert rec["status"] == "ok"
    text = buf.getvalue()
    assert "bn/bs16/seed0-" in text and "epoch 2/2" in text and "Epoch 0/" not in text
    assert "40/40" in text  # SGD steps (2 epochs x 20), not Lightning's calls (2 x 5)
    assert re.search(r"loss \d\.\d{4}", text) and re.search(r"[\d,]+ img/s", text)


def test_default_threads_are_the_cores_other_processes_leave_idle(monkeypatch):
    from normbench import environment

    monkeypatch.setattr(environment.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for load, threads in ((0.2, 4), (1.6, 2), (3.2, 1), (9.0, 1)):
        environment.idle_cores.cache_clear()
        monkeypatch.setattr(environment.os, "getloadavg", lambda load=load: (load, 0.0, 0.0))
        assert environment.cpu_threads(None) == threads
    assert environment.cpu_threads(3) == 3  # trainer.threads overrides
    environment.idle_cores.cache_clear()


def _tensorboard_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` as TensorBoard shows it: its own reader, which applies purges."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_an_epoch_logged_but_not_checkpointed_shows_once_in_tensorboard(quick, monkeypatch):
    """Killed after logging epoch 2 but before checkpointing it, a run trains epoch 2 again
    when relaunched; TensorBoard must show that epoch once, with the values the record has."""
    original = module_mod.NormbenchModule.on_save_checkpoint

    def crash_saving_epoch_two(self, checkpoint):
        if self.current_epoch == 1:
            raise Interrupt()
        original(self, checkpoint)

    cfg = quick("norm=bn", "epochs=3")
    monkeypatch.setattr(module_mod.NormbenchModule, "on_save_checkpoint", crash_saving_epoch_two)
    with pytest.raises(Interrupt):
        run(cfg)
    monkeypatch.setattr(module_mod.NormbenchModule, "on_save_checkpoint", original)
    rec = run(cfg)
    assert rec["status"] == "ok" and [a["from_epoch"] for a in rec["attempts"]] == [0, 1]
    run_dir = Path(cfg.paths.runs) / rec["run_key"]
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 2  # epoch 2 was logged by both launches
    shown = _tensorboard_scalars(run_dir / "tb", "accuracy/test")
    assert shown == [(h["epoch"], pytest.approx(h["test_acc"])) for h in rec["history"]]
