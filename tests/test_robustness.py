"""Sweeps that survive and scale: real subprocesses killed with SIGKILL, concurrent launches,
the submitit launcher, and every bad input ending in one line with no finished record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from normbench.cli import unknown_group_option
from normbench.errors import ConfigError
from normbench.models import build_model
from normbench.records import load_records, read_record, run_lock
from normbench.train import CONFIG_DIR, run

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def train_cmd(cifar_root: Path, tmp: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "normbench.cli", "train", f"data.root={cifar_root}", "data.download=false",
            f"paths.runs={tmp / 'runs'}", f"paths.logs={tmp / 'logs'}", "trainer.progress=none",
            "data.eval_batch_size=64", *overrides]


def records(tmp: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp / "runs").rglob("record.json"))]


def wait_for(predicate, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.02)
    raise AssertionError("timed out")


def start_until_epoch_2(cmd: list[str], tmp: Path) -> subprocess.Popen:
    """Start a training run and return once it is into its second epoch (its first checkpoint
    written). A shell's background job (`pytest &`) starts with SIGINT ignored, and children
    inherit that: the run gets the default handling that a terminal's Ctrl-C meets."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: any((tmp / "runs").rglob("last.ckpt")), proc=proc)
    time.sleep(0.3)  # into epoch 2
    return proc


# --- crash safety ----------------------------------------------------------------------------


def test_sweep_killed_during_setup_then_relaunched_finishes_every_run(cifar_root, tmp_path):
    cmd = train_cmd(cifar_root, tmp_path, "-m", "norm=bn,none", "epochs=1")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # still importing: nothing written yet
    proc.kill()
    proc.wait()
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    recs = records(tmp_path)
    assert [r["norm_tag"] for r in recs] == ["bn", "none"] and all(r["status"] == "ok" for r in recs)


def test_run_killed_mid_epoch_resumes_from_its_checkpoint(cifar_root, tmp_path):
    cmd = train_cmd(cifar_root, tmp_path, "norm=bn", "epochs=3", "batch_size=8")
    proc = start_until_epoch_2(cmd, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "runs").rglob("record.json")), "a killed run must not claim to be finished"
    df, problems = load_records(tmp_path / "runs")  # a report during the sweep sees no finished run
    assert df.empty and problems and problems[0].endswith("unfinished (no record.json yet)")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resume cifar10/convnet/bn/bs8/" in done.stderr + done.stdout
    (rec,) = records(tmp_path)
    assert rec["status"] == "ok" and [h["epoch"] for h in rec["history"]] == [1, 2, 3]


def test_kill_while_writing_the_record_leaves_no_partial_record(cifar_root, tmp_path):
    overrides = ["norm=none", "epochs=1"]
    killer = (
        "import os, signal, sys; real = os.replace\n"
        "def replace(a, b):\n"
        "    if str(b).endswith('record.json'): os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(a, b)\n"
        "os.replace = replace\n"
        "from normbench.cli import main; sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = train_cmd(cifar_root, tmp_path, *overrides)
    proc = subprocess.run([sys.executable, "-c", killer, *cmd[3:]], env=ENV, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    run_dir = next((tmp_path / "runs").rglob("config.yaml")).parent
    assert not (run_dir / "record.json").exists() and list(run_dir.glob(".record.json.*.tmp"))
    assert load_records(tmp_path / "runs")[0].empty
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_record(run_dir)["status"] == "ok" and not list(run_dir.glob(".record.json.*.tmp"))


# --- concurrency -----------------------------------------------------------------------------


def test_two_launches_of_one_sweep_never_run_a_config_twice(cifar_root, tmp_path):
    cmd = train_cmd(cifar_root, tmp_path, "-m", "norm=bn,none,gn", "epochs=2")
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    recs = records(tmp_path)
    assert sorted(r["norm_tag"] for r in recs) == ["bn", "gn", "none"] and all(r["status"] == "ok" for r in recs)
    trained = [line for out in outputs for line in out.splitlines() if "[normbench][INFO] - ok cifar10/" in line]
    keys = [line.split(" - ok ")[1].split(":")[0] for line in trained]
    assert sorted(keys) == sorted(r["run_key"] for r in recs)  # each config trained exactly once


def test_lock_of_a_live_process_skips_and_of_a_killed_one_is_recovered(quick):
    cfg = quick("norm=none", "epochs=1")
    first = run(cfg)  # finds the run directory
    run_dir = Path(cfg.paths.runs) / first["run_key"]
    (run_dir / "record.json").unlink()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from normbench.records import run_lock\n"
        f"with run_lock(Path({str(run_dir)!r})) as h:\n    print('locked', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    busy = run(cfg)
    assert busy["status"] == "running elsewhere" and read_record(run_dir) is None
    holder.kill()  # the kernel drops a dead process's flock
    holder.wait()
    assert run(cfg)["status"] == "ok"


def test_run_lock_reports_holder(tmp_path):
    with run_lock(tmp_path) as mine:
        assert mine is None
        with run_lock(tmp_path) as other:  # a second open file description conflicts too
            assert other == f"{os.getpid()}@{os.uname().nodename}"
    with run_lock(tmp_path) as again:
        assert again is None


# --- scale out with Hydra's launchers --------------------------------------------------------


def test_submitit_local_runs_four_configs_two_at_a_time(cifar_root, tmp_path):
    cmd = train_cmd(cifar_root, tmp_path, "-m", "hydra/launcher=parallel", "hydra.sweeper.max_batch_size=2",
                    "hydra.launcher.cpus_per_task=1", "norm=bn,none", "seed=0,1", "epochs=1")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    recs = records(tmp_path)
    assert len({r["run_key"] for r in recs}) == 4 and all(r["status"] == "ok" for r in recs)
    assert all(r["device"].endswith("1 threads)") for r in recs)  # each job got its share: 1 thread
    first = [r for r in recs if r["norm_tag"] == "bn"]  # Hydra's first batch of 2
    second = [r for r in recs if r["norm_tag"] == "none"]
    assert min(r["started_at"] for r in second) >= max(r["finished_at"] for r in first)
    # the jobs ran in other processes, whose callbacks this one never sees: counted from their run dirs
    assert "Sweep done: 4 runs (4 ok)" in done.stdout


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    from normbench.train import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.array_parallelism) == ("gpu", 1, 32)
    assert launcher.timeout_min == 720 and launcher.max_num_timeout == 3


# --- bad input: one line, non-zero exit, no finished record ------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("norm=batchnorm", "norm=batchnorm is not a known norm; allowed: bgn, bn, brn, cbn, evonorm_b0, evonorm_s0, frn, ghost_bn2, ghost_bn4, ghost_bn8, gn, gn_ws, in, ln, lrn, lrn_within, none, pn, sabn, sn"),
        ("model=resnet", "model=resnet is not a known model; allowed: alexnet, convnet, resnet20"),
        ("data=imagenet", "data=imagenet is not a known data; allowed: cifar10, cifar100, fashion_mnist"),
        ("experiment=gn_vs_bm", "experiment=gn_vs_bm is not a known experiment; allowed: ghost_bn, gn_vs_bn, gn_vs_bn_resnet20, gn_vs_bn_steps, lrn_ablation, norm_zoo, norm_zoo_small, smoke"),
    ],
)
def test_unknown_group_option_lists_valid_names(override, message):
    assert unknown_group_option(["-m", override]) == message


def test_sweep_lists_are_checked_item_by_item():
    assert unknown_group_option(["norm=bn,gn"]) is None
    assert unknown_group_option(["norm=bn,gx"]).startswith("norm=gx is not a known norm")
    assert unknown_group_option(["norm=choice(bn,gn)", "batch_size=2,4"]) is None


def test_cli_unknown_norm_in_a_sweep_is_one_line(cifar_root, tmp_path):
    proc = subprocess.run(train_cmd(cifar_root, tmp_path, "-m", "norm=bn,batchnorm"), env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: norm=batchnorm is not a known norm; allowed: bgn, bn, brn, cbn, evonorm_b0, evonorm_s0, frn, ghost_bn2, ghost_bn4, ghost_bn8, gn, gn_ws, in, ln, lrn, lrn_within, none, pn, sabn, sn"
    assert not (tmp_path / "runs").exists()


def test_cli_unknown_key_fails_with_hydras_message(cifar_root, tmp_path):
    proc = subprocess.run(train_cmd(cifar_root, tmp_path, "optim.learning_rate=0.1"), env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "Could not override 'optim.learning_rate'" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_verbose_shows_the_traceback(cifar_root, tmp_path):
    proc = subprocess.run(train_cmd(cifar_root, tmp_path, "batch_size=0", "--verbose"), env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "batch_size=0 is not valid" in proc.stderr


def test_unwritable_results_folder(quick, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError) as err:
        run(quick(f"paths.runs={blocker / 'runs'}"))
    assert str(err.value) == (f"paths.runs={str(blocker / 'runs')!r} cannot be written (Not a directory); "
                              "set paths.runs to a writable folder")


@pytest.mark.parametrize(
    ("norm", "shape", "batch", "message"),
    [
        ({"name": "in"}, (3, 2, 2), 8, "norm=in at site conv2 would normalize over 1 value (batch_size=8, 64 channels, 1x1 map)"),
        ({"name": "gn", "group_size": 1}, (3, 2, 2), 8, "norm=gn at site conv2 would normalize over 1 value"),
        ({"name": "bn"}, (3, 2, 2), 1, "norm=bn at site conv2 would normalize over 1 value (batch_size=1, 64 channels, 1x1 map)"),
    ],
)
def test_statistics_over_a_single_value_are_refused(norm, shape, batch, message):
    with pytest.raises(ConfigError) as err:
        build_model({"name": "alexnet", "width": 0.25}, norm, shape, 10, batch_size=batch)  # conv2 sees 1x1
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_model_whose_maps_vanish_says_so():
    with pytest.raises(ConfigError, match=r"model 'convnet' cannot take 2x2 inputs \(the maps shrink to nothing"):
        build_model({"name": "convnet"}, {"name": "bn"}, (3, 2, 2), 10, batch_size=8)


def test_statistics_over_several_values_on_a_1x1_map_are_allowed():
    # LN over (C, 1, 1) and GN with 4 channels per group are well defined: C or 4 values each.
    for norm in ({"name": "ln"}, {"name": "gn", "groups": 8}, {"name": "bn"}):
        net = build_model({"name": "alexnet", "width": 0.25}, norm, (3, 2, 2), 10, batch_size=2)
        assert torch.isfinite(net(torch.randn(2, 3, 2, 2))).all()


def test_tampered_labels_are_refused(tmp_path):
    import pickle

    from conftest import write_cifar10

    from normbench.data import load_dataset
    from normbench.errors import DataError

    root = write_cifar10(tmp_path, train_per_batch=8, test=8)
    path = root / "cifar-10-batches-py" / "data_batch_2"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][0] = 12
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"data_batch_2: labels outside 0..9; the file is corrupt"):
        load_dataset("cifar10", root, allow_download=False)


def test_the_write_probe_never_races(tmp_path):
    # Two launches probe the same run directory at once: neither may fail falsely.
    import threading

    from normbench.train import make_run_dir

    errors = []

    def probe():
        for _ in range(300):
            try:
                make_run_dir(tmp_path, "cifar10/convnet/bn/bs2/seed0-00000000")
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)

    threads = [threading.Thread(target=probe) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert list((tmp_path / "cifar10/convnet/bn/bs2/seed0-00000000").iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("norm.tag=../../../x", "norm.tag='../../../x' is not valid; allowed: letters, digits and . _ + = - "
                                "(not starting with . or -), or null"),
        ("norm.tag=a/b", "norm.tag='a/b' is not valid"),
        ("norm.tag=..", "norm.tag='..' is not valid"),
        ("trainer.pack=0", "trainer.pack=0 is not valid; allowed: auto, or an integer >= 1 (1: no packing)"),
        ("trainer.pack=some", "trainer.pack='some' is not valid"),
        ("trainer.pack_seeds=[a]", "trainer.pack_seeds=['a'] is not valid; allowed: null, or a list of integers >= 0"),
    ],
)
def test_path_and_pack_keys_are_checked_before_anything_is_written(quick, tmp_path, override, message):
    with pytest.raises(ConfigError) as err:
        run(quick(override))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


def test_version_is_one_line(capsys):
    from normbench import __version__
    from normbench.cli import main

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"normbench {__version__}\n"


# --- one schema for every key (normbench.schema) ------------------------------------------------

SCHEMA_CASES = [
    (["seed=4294967296"], "seed=4294967296 is not valid; allowed: an integer in [0, 4294967295]"),
    (["target_acc=abc"], "target_acc='abc' is not valid; allowed: a number in [0, 1]"),
    (["target_acc=2"], "target_acc=2 is not valid; allowed: a number in [0, 1]"),
    (["trainer.precision=bogus"], "trainer.precision='bogus' is not valid; allowed: 32-true | 32 | 64-true | 64 | "
                                  "16-mixed | 16 | bf16-mixed | bf16 | 16-true | bf16-true"),
    (["trainer.devices=0"], "trainer.devices=0 is not valid; allowed: 1 (each run trains on one device; runs are "
                            "parallel across jobs)"),
    (["trainer.devices=2"], "trainer.devices=2 is not valid; allowed: 1 (each run trains on one device; runs are "
                            "parallel across jobs)"),
    (["trainer.check_every_n_steps=abc"], "trainer.check_every_n_steps='abc' is not valid; allowed: an integer >= 1"),
    (["data.subset_seed=abc"], "data.subset_seed='abc' is not valid; allowed: an integer >= 0"),
    (["optim.momentum=2"], "optim.momentum=2 is not valid; allowed: a number in [0, 1)"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true is not valid with optim.momentum=0; allowed: "
                                                  "optim.nesterov=false, or a momentum > 0 (Nesterov momentum needs "
                                                  "a momentum)"),
    (["optim.milestones=[abc]"], "optim.milestones=['abc'] is not valid; allowed: a list of increasing fractions of "
                                 "training in (0, 1)"),
    (["optim.gamma=0"], "optim.gamma=0 is not valid; allowed: a number in (0, 1]"),
    (["+optim.lr=0.1"], "optim.lr is not a config key; allowed: optim.name, optim.base_lr, optim.base_batch, "
                        "optim.lr_scaling, optim.momentum, optim.nesterov, optim.weight_decay, optim.schedule, "
                        "optim.milestones, optim.gamma, optim.warmup_epochs"),
    (["+lr=0.1"], "lr is not a config key; allowed: batch_size, epochs, seed, target_acc, precise_bn_images, budget, "
                  "data, model, norm, optim, trainer, paths"),
    (["trainer.pack_seeds=[]"], "trainer.pack_seeds=[] is not valid; allowed: null, or a list of integers >= 0"),
    (["data.val_size=0"], "data.val_size=0 is not valid; allowed: null, or an integer >= 1"),
    (["model=alexnet", "model.dropout=2"], "model.dropout=2 is not valid; allowed: a number in [0, 1)"),
    (["data.train_size=100000"], "data.train_size=100000 is larger than the split (320 images); allowed: at most "
                                 "320, or null for all of them"),
    (["data.test_size=5000"], "data.test_size=5000 is larger than the split (128 images); allowed: at most 128, or "
                              "null for all of them"),
]
if not torch.cuda.is_available():
    SCHEMA_CASES.append((["trainer.accelerator=gpu"], "trainer.accelerator=gpu is not valid on this machine (no CUDA "
                                                      "GPU found); allowed: auto or cpu"))


@pytest.mark.parametrize(("overrides", "message"), SCHEMA_CASES, ids=[" ".join(o) for o, _ in SCHEMA_CASES])
def test_every_key_is_checked_in_one_line_before_anything_is_created(quick, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        run(quick(*overrides))
    assert str(err.value) == message
    assert not (tmp_path / "runs").exists()


def test_cli_a_key_the_schema_does_not_know_is_exit_2(cifar_root, tmp_path):
    proc = subprocess.run(train_cmd(cifar_root, tmp_path, "+optim.lr=0.1"), env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: optim.lr is not a config key; allowed: optim.name, optim.base_lr, optim.base_batch, optim.lr_scaling, "
        "optim.momentum, optim.nesterov, optim.weight_decay, optim.schedule, optim.milestones, optim.gamma, "
        "optim.warmup_epochs"]
    assert not (tmp_path / "runs").exists()


def test_every_preset_and_norm_config_fits_the_schema(quick):
    from omegaconf import OmegaConf

    from normbench.checks import check_config

    for preset in sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")):
        check_config(OmegaConf.to_container(quick(f"experiment={preset}"), resolve=True))
    for norm in sorted(p.stem for p in (CONFIG_DIR / "norm").glob("*.yaml")):
        check_config(OmegaConf.to_container(quick(f"norm={norm}"), resolve=True))


def test_docs_config_lists_every_key_as_the_schema_says():
    from normbench.schema import reference_markdown

    text = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    assert text.endswith(reference_markdown())


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_run_with_an_honest_status_and_relaunch_resumes(cifar_root, tmp_path, signum, status):
    cmd = train_cmd(cifar_root, tmp_path, "norm=bn", "epochs=3", "batch_size=8")
    proc = start_until_epoch_2(cmd, tmp_path)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == status, out[-2000:]
    assert "Traceback" not in out and f"interrupted by {signal.Signals(signum).name}" in out
    (marker,) = (tmp_path / "runs").rglob("interrupted")
    assert json.loads(marker.read_text())["signal"] == signal.Signals(signum).name
    assert not list((tmp_path / "runs").rglob("record.json"))
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resume cifar10/convnet/bn/bs8/" in done.stderr + done.stdout
    (rec,) = records(tmp_path)
    assert rec["status"] == "ok" and [h["epoch"] for h in rec["history"]] == [1, 2, 3]
    assert not marker.exists()


def test_cli_unwritable_logs_folder_is_one_line_and_creates_nothing(cifar_root, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cmd = [a for a in train_cmd(cifar_root, tmp_path) if not a.startswith("paths.logs=")]
    proc = subprocess.run([*cmd, f"paths.logs={blocker}/logs"], env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: paths.logs='{blocker}/logs' cannot be written ({blocker} is not a folder); "
                                   f"set paths.logs to a writable folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_submitits_repeated_sacct_warning_is_said_once(caplog):
    """A cluster whose sacct fails now and then: submitit's per-poll warning (printed three
    times each) becomes one normbench line; its other warnings pass."""
    import logging

    import normbench.train as train_mod

    train_mod.SacctOnce.said = False
    log = logging.getLogger("submitit")
    with caplog.at_level(logging.WARNING):
        for call in range(1, 4):
            log.warning(f"Call #{call} - Bypassing sacct error Command 'sacct' returned 1, status may be inaccurate.")
        log.warning("something else")
    said = [(r.name, r.getMessage()) for r in caplog.records]
    assert said[1] == ("submitit", "something else") and len(said) == 2
    assert said[0][0] == "normbench" and said[0][1].startswith("Slurm's sacct did not answer (Command 'sacct' "
                                                               "returned 1, status may be inaccurate.)")
