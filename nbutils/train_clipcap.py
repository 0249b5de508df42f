"""`python -m nbutils.train_clipcap`: ClipCap from the command line (see nbutils.training.clipcap)."""

import sys

from .training.clipcap import main

if __name__ == "__main__":
    sys.exit(main())
