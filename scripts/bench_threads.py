"""Training throughput with 1 and with 2 torch threads, in the machine's current state.

Run it on an idle machine and again while another training runs (e.g. a sweep in the
background) to see why ``trainer.threads=null`` takes only the idle cores (README, "Threads"):

    python scripts/bench_threads.py            # convnet + BN, batch 32, 100 SGD steps, 2 repeats

Each measurement is a fresh process (torch fixes its thread pool at the first parallel op).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

STEP = """
import sys, time, torch
from normbench.models import build_model
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
net = build_model({"name": "convnet"}, {"name": "bn"}, (3, 32, 32), 10)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
for _ in range(10):
    step()
t = time.perf_counter()
for _ in range(100):
    step()
print(100 * 32 / (time.perf_counter() - t))
"""


def main() -> None:
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for repeat in range(2):
        for threads in (1, 2):
            out = subprocess.run([sys.executable, "-c", STEP, str(threads)], capture_output=True, text=True, check=True)
            print(f"repeat {repeat}: {threads} thread(s): {float(out.stdout):7.0f} img/s")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
