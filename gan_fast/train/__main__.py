"""``python -m gan_fast.train [train|eval] ...``: the same as ``gan-fast train|eval``."""
import sys

from gan_fast.train.cli import main

sys.exit(main())
