"""Inference speed of fpn against torchvision in one run (same as ``fpn bench``).

    python benchmarks/inference.py [--repeats 3] [--quick] [--output reports/inference.md]
"""

import sys

from fpn.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
