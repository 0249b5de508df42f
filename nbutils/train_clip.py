"""`python -m nbutils.train_clip`: contrastive training from the command line (see nbutils.training.clip)."""

import sys

from .training.clip import main

if __name__ == "__main__":
    sys.exit(main())
