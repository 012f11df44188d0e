"""Packed training vs separate runs (see normbench/bench_pack.py).

    python scripts/bench_pack.py [--batch-sizes 2 8 32] [--ks 1 2 4 8 16] [--steps 40] [--repeats 3]
"""

import sys

from normbench.bench_pack import main

if __name__ == "__main__":
    sys.exit(main())
