"""Training-step overhead of normbench vs a plain PyTorch loop (see normbench/bench.py).

    python scripts/bench_overhead.py [--norms bn gn lrn_within none] [--batch-sizes 2 8 32 128]
"""

import sys

from normbench.bench import main

if __name__ == "__main__":
    sys.exit(main())
