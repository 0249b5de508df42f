"""`python -m nbutils.train_encoder_decoder`: captioning from the command line (nbutils.training.encoder_decoder)."""

import sys

from .training.encoder_decoder import main

if __name__ == "__main__":
    sys.exit(main())
