"""``python -m fpn`` (and ``torchrun -m fpn``) runs the command line."""

import sys

from fpn.cli import main

sys.exit(main())
