"""``normbench bench --pack`` / ``scripts/bench_pack.py``: K packed members against K separate
runs, step for step.

For each batch size and K, the same K seeded ``convnet`` models, device-resident data with
crop + flip (each member its own ``DeviceLoader`` order, as when it runs alone), cross-entropy
and SGD (momentum 0.9, weight decay 5e-4) run ``--steps`` steps

  (a) one after the other, each model alone, in torch's default memory format, as a sweep
      runs today on the CPU (``trainer.channels_last=false``);
  (a') the same in channels_last;
  (b) packed into one model (``normbench.pack``), channels_last: one forward and one backward
      per step for all K.

They alternate ``--repeats`` times; images/s are medians, each speedup the median of the
per-repeat ratios of total images/s (b/a and b/a'). On the 2-core CPU channels_last alone
makes convnet's steps faster (its max pool and grouped convs vectorize), so b/a' is the
gain of packing itself. Results go to a CSV and a PNG.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from normbench.bench import write_rows
from normbench.data import DeviceLoader
from normbench.host_memory import keep_freed_memory
from normbench.models import build_model
from normbench.optim import build_optimizer
from normbench.pack import pack_net, packed_input, packed_loss

BATCHES = (2, 8, 32)
KS = (1, 2, 4, 8, 16)


def _data(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loaders(k: int, batch: int, steps: int, device: torch.device) -> list[DeviceLoader]:
    x, y = _data(batch * steps, 0, device)
    mean, std = torch.full((3,), 0.45), torch.full((3,), 0.25)
    return [DeviceLoader(x, y, batch, mean, std, augment="crop_flip", shuffle=True, drop_last=True, seed=s, device=device)
            for s in range(k)]


def _models(k: int, norm: dict, device: torch.device) -> list[torch.nn.Module]:
    out = []
    for s in range(k):
        torch.manual_seed(s)
        out.append(build_model({"name": "convnet"}, norm, (3, 32, 32), 10).to(device))
    return out


def _sgd(params) -> torch.optim.Optimizer:
    return build_optimizer(params, {"momentum": 0.9, "weight_decay": 5e-4}, lr=0.01)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def separate(k: int, batch: int, steps: int, norm: dict, device: torch.device,
             fmt: torch.memory_format = torch.contiguous_format) -> float:
    """Total images/s of K models trained one after the other."""
    models = [m.to(memory_format=fmt) for m in _models(k, norm, device)]
    loaders = _loaders(k, batch, steps, device)
    opts = [_sgd(m.parameters()) for m in models]
    _sync(device)
    t0 = time.perf_counter()
    for model, loader, opt in zip(models, loaders, opts):
        for x, y in loader:
            loss = F.cross_entropy(model(x.contiguous(memory_format=fmt)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return k * batch * steps / (time.perf_counter() - t0)


def packed(k: int, batch: int, steps: int, norm: dict, device: torch.device) -> float:
    """Total images/s of the same K models packed into one."""
    model = pack_net(_models(k, norm, device)).to(device, memory_format=torch.channels_last)
    loaders = _loaders(k, batch, steps, device)
    opt = _sgd(model.parameters())
    _sync(device)
    t0 = time.perf_counter()
    for items in zip(*loaders):
        x = packed_input([x for x, _ in items]).contiguous(memory_format=torch.channels_last)
        loss, _ = packed_loss(model(x), [y for _, y in items])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return k * batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="normbench bench --pack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--norm", default="bn", help="norm name (default bn)")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=list(BATCHES))
    ap.add_argument("--ks", nargs="+", type=int, default=list(KS))
    ap.add_argument("--steps", type=int, default=40, help="SGD steps per member per measurement (default 40)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--csv", default="results/bench/pack.csv")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device, norm = torch.device(args.device), {"name": args.norm}
    malloc = keep_freed_memory()  # as normbench's runs do (normbench/host_memory.py); both arms share it
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"normbench bench --pack: convnet, norm {args.norm}, {args.steps} steps per member, {args.repeats} repeats "
          f"({where}, torch {torch.__version__}, freed host memory: {malloc})", flush=True)
    rows = []
    for batch in args.batch_sizes:
        for k in args.ks:
            seq, seq_cl, pk = [], [], []
            packed(k, batch, 3, norm, device)  # warm-up: allocator, kernel choice
            for _ in range(args.repeats):
                seq.append(separate(k, batch, args.steps, norm, device))
                seq_cl.append(separate(k, batch, args.steps, norm, device, torch.channels_last))
                pk.append(packed(k, batch, args.steps, norm, device))
            row = {"device": where, "norm": args.norm, "batch_size": batch, "k": k,
                   "separate_images_per_s": statistics.median(seq),
                   "separate_channels_last_images_per_s": statistics.median(seq_cl),
                   "packed_images_per_s": statistics.median(pk),
                   "packed_per_member_images_per_s": statistics.median(pk) / k,
                   "speedup": statistics.median(p / s for p, s in zip(pk, seq)),
                   "speedup_vs_channels_last": statistics.median(p / s for p, s in zip(pk, seq_cl))}
            rows.append(row)
            print(f"  bs {batch:>3} K {k:>2}: separate {row['separate_images_per_s']:7.0f} "
                  f"(channels_last {row['separate_channels_last_images_per_s']:7.0f})  packed "
                  f"{row['packed_images_per_s']:7.0f} img/s ({row['packed_per_member_images_per_s']:5.0f} per member)  "
                  f"speedup {row['speedup']:.2f}x ({row['speedup_vs_channels_last']:.2f}x)", flush=True)
    out = write_rows(rows, Path(args.csv))
    _plot(rows, out.with_suffix(".png"))
    print(f"written: {out} and {out.with_suffix('.png')}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4))
    for batch in sorted({r["batch_size"] for r in rows}):
        sel = [r for r in rows if r["batch_size"] == batch]
        line, = ax.plot([r["k"] for r in sel], [r["speedup"] for r in sel], marker="o", label=f"batch {batch}")
        ax.plot([r["k"] for r in sel], [r["speedup_vs_channels_last"] for r in sel], marker="x", ls="--",
                color=line.get_color(), label=f"batch {batch}, vs channels_last")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("members packed (K)")
    ax.set_ylabel("total images/s, packed / separate runs")
    ax.set_title(f"packing speedup ({rows[0]['device']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the axes: never over a line
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
