"""Equal budgets (normbench.budget): every batch size trains the same SGD steps (or images),
in equal evaluation periods, with data in seeded passes; bad values are one line."""

from __future__ import annotations

import pytest
import torch

from normbench import data as datamod
from normbench.derived import derive_record
from normbench.errors import ConfigError
from normbench.train import run


def stream(loader: datamod.DeviceLoader, iterations: int) -> list[torch.Tensor]:
    out = []
    for e in range(iterations):
        loader.sampler.set_epoch(e)
        out += [y for _, y in loader]
    return out


def test_periods_cut_the_same_stream_of_passes():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (21, 3, 8, 8), generator=gen, dtype=torch.uint8)
    labels = torch.arange(21)  # each label names its image
    mean, std = torch.zeros(3), torch.ones(3)

    def loader(period=None, k=1):
        return datamod.DeviceLoader(images, labels, 4, mean, std, augment="crop_flip", shuffle=True, drop_last=True,
                                    seed=3, period=period, batches_per_item=k)

    passes = stream(loader(), 4)  # 4 passes of 5 full batches (the 21st image waits for the next pass)
    assert len(passes) == 20 and all(len(set(torch.cat(passes[i:i + 5]).tolist())) == 20 for i in range(0, 20, 5))
    for period in (3, 5, 7):
        periods = stream(loader(period), 20 // period)
        assert len(periods) == 20 // period * period
        assert all(torch.equal(a, b) for a, b in zip(periods, passes))
    stacked = stream(loader(7, k=3), 2)  # several steps a call: the same batches
    assert all(torch.equal(a, b) for a, b in zip(torch.cat([s.reshape(-1, 4) for s in stacked]), passes))
    x_pass = [x for x, _ in loader()]  # the same crops and flips, not only the same images
    x_period = [x for x, _ in loader(period=5)]
    assert all(torch.equal(a, b) for a, b in zip(x_pass, x_period))


def test_every_batch_size_takes_the_budgets_steps(quick):
    for batch in (8, 32):
        rec = run(quick(f"batch_size={batch}", "budget.steps=24", "epochs=3", "norm=gn"))
        assert rec["status"] == "ok" and rec["config"]["budget"] == {"steps": 24}
        assert derive_record(rec)["steps"] == 24 and len(rec["history"]) == 3
        assert [h["train_images"] for h in rec["history"]] == [8 * batch] * 3
        assert rec["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule spans the budget
    rec = run(quick("batch_size=8", "budget.images=192", "epochs=3", "norm=gn"))
    assert derive_record(rec)["steps"] == 24 and rec["run_key"].split("-")[-1] != ""
    plain = run(quick("batch_size=8", "norm=gn"))
    assert "budget" not in plain["config"]  # no budget: old run keys stay valid


@pytest.mark.parametrize("overrides, message", [
    (["budget.steps=abc"], "budget.steps='abc' is not valid; allowed: null, or an integer >= 1"),
    (["budget.steps=0"], "budget.steps=0 is not valid; allowed: null, or an integer >= 1"),
    (["budget.steps=10", "budget.images=320"], "budget.steps=10 and budget.images=320 are alternatives; allowed: one "
                                                "of them (or neither: train `epochs` passes)"),
    (["budget.steps=10", "epochs=3"], "budget.steps=10 is not valid with epochs=3 evaluation periods; allowed: a "
                                      "multiple of 3 (equal periods), e.g. 9"),
    (["budget.images=100"], "budget.images=100 is not valid with batch_size=32; allowed: a multiple of the batch size "
                            "(every step a full batch), e.g. 96"),
    (["budget.images=320", "epochs=3"], "budget.images=320 is not valid with epochs=3 evaluation periods at "
                                        "batch_size=32; allowed: a multiple of 96 (equal periods), e.g. 288"),
])
def test_bad_budgets_are_one_line_and_leave_nothing(quick, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        run(quick(*overrides))
    assert str(err.value) == message
    assert not (tmp_path / "runs").exists()
