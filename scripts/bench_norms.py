"""Forward + backward time of every normalization layer, and LRN against PyTorch's.

    python scripts/bench_norms.py [--shape 128 32 16 16] [--threads 2]

Times one forward and one backward pass per layer on a float32 CPU tensor with
torch.utils.benchmark (median over adaptive repeats), and prints the ratio
F.local_response_norm / normbench LRN for the across-channel region (issue target: >= 2x).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from normbench.norms import build_norm


def fwd_bwd_ms(fn, x: torch.Tensor, grad: torch.Tensor, threads: int) -> float:
    """Median milliseconds of ``fn(x).backward(grad)``."""
    timer = benchmark.Timer(stmt="fn(x).backward(grad)", globals=dict(fn=fn, x=x, grad=grad),
                            num_threads=threads)
    return timer.adaptive_autorange(min_run_time=1.0).median * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, default=[128, 32, 16, 16], metavar=("N", "C", "H", "W"))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(*args.shape).requires_grad_()
    grad = torch.randn(*args.shape)
    channels = args.shape[1]
    layers = {
        "none": {"name": "none"},
        "bn": {"name": "bn"},
        "ln": {"name": "ln"},
        "in": {"name": "in"},
        "gn (G=8)": {"name": "gn", "groups": 8},
        "lrn across (alexnet)": {"name": "lrn", "preset": "alexnet"},
        "lrn within (caffe_cifar10_full)": {"name": "lrn", "preset": "caffe_cifar10_full"},
    }
    print(f"forward+backward, float32 CPU, shape {tuple(args.shape)}, {args.threads} threads "
          f"(torch {torch.__version__})")
    times = {}
    for label, spec in layers.items():
        times[label] = fwd_bwd_ms(build_norm(spec, channels), x, grad, args.threads)
    # The AlexNet preset expressed in PyTorch's convention: alpha / n with n = 5 -> 5e-4.
    ref = lambda t: F.local_response_norm(t, 5, alpha=5e-4, beta=0.75, k=2.0)  # noqa: E731
    times["F.local_response_norm (same layer)"] = fwd_bwd_ms(ref, x, grad, args.threads)
    width = max(map(len, times))
    for label, ms in times.items():
        print(f"  {label:<{width}}  {ms:8.3f} ms")
    ratio = times["F.local_response_norm (same layer)"] / times["lrn across (alexnet)"]
    print(f"LRN across speedup over F.local_response_norm: {ratio:.2f}x (target >= 2x)")


if __name__ == "__main__":
    main()
