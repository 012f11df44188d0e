"""Forward + backward time of every normalization layer, relative to BN, and LRN against PyTorch's.

    python scripts/bench_norms.py [--shape 32 32 16 16] [--threads 2]

Every layer is built from its ``normbench/configs/norm/<name>.yaml`` (the settings a run uses) and timed
alone, float32 on the CPU, with torch.utils.benchmark (median over adaptive repeats). CBN
reads the weight of the conv before it, so it is timed as conv + CBN, minus conv + BN, plus BN
alone. ``gn_ws`` is GN (its weight standardization lives in the conv, not in the layer). The
default shape is convnet's conv2 site at batch 32. Also prints F.local_response_norm /
normbench LRN for the across-channel region (issue target: >= 2x).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils import benchmark

from normbench.norms import PLACEMENT_KEYS, build_norm, traits

CONFIGS = Path(__file__).resolve().parent.parent / "normbench" / "configs" / "norm"


def fwd_bwd_ms(fn, x: torch.Tensor, grad: torch.Tensor, threads: int) -> float:
    """Median milliseconds of ``fn(x).backward(grad)``."""
    timer = benchmark.Timer(stmt="fn(x).backward(grad)", globals=dict(fn=fn, x=x, grad=grad), num_threads=threads)
    return timer.adaptive_autorange(min_run_time=1.0).median * 1e3


def norm_specs() -> dict[str, dict]:
    """Every norm config's layer spec (placement keys dropped), by config name."""
    specs = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        norm = cfg.get("norm", cfg)  # gn_ws.yaml is a global-package config
        specs[path.stem] = {k: v for k, v in norm.items() if k not in PLACEMENT_KEYS}
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, default=[32, 32, 16, 16], metavar=("N", "C", "H", "W"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.manual_seed(0)
    n, c, h, w = args.shape
    x = torch.randn(n, c, h, w).requires_grad_()
    grad = torch.randn(n, c, h, w)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
    print(f"forward+backward of each layer alone, float32 CPU, shape {tuple(args.shape)}, {args.threads} threads "
          f"(torch {torch.__version__})")
    times = {}
    for label, spec in norm_specs().items():
        layer = build_norm(spec, c)
        if traits(layer).needs_conv:
            layer.attach_conv(conv)
            bn = build_norm({"name": "bn"}, c)
            with_conv = fwd_bwd_ms(lambda t, layer=layer: layer(conv(t)), x, grad, args.threads)
            with_bn = fwd_bwd_ms(lambda t: bn(conv(t)), x, grad, args.threads)
            times[label] = with_conv - with_bn + fwd_bwd_ms(bn, x, grad, args.threads)
        else:
            times[label] = fwd_bwd_ms(layer, x, grad, args.threads)
    width = max(map(len, times))
    for label, ms in times.items():
        print(f"  {label:<{width}}  {ms:8.3f} ms  {ms / times['bn']:6.2f}x bn")
    layer = build_norm({"name": "lrn", "preset": "alexnet"}, c)
    ours = fwd_bwd_ms(layer, x, grad, args.threads)
    # The AlexNet preset expressed in PyTorch's convention: alpha / n with n = 5 -> 5e-4.
    ref = fwd_bwd_ms(lambda t: F.local_response_norm(t, 5, alpha=5e-4, beta=0.75, k=2.0), x, grad, args.threads)
    print(f"LRN across (alexnet) alone {ours:.3f} ms vs F.local_response_norm {ref:.3f} ms: "
          f"{ref / ours:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
