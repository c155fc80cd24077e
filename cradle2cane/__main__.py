"""``python -m cradle2cane``: the same command line as ``cradle2cane``."""

import sys

from .tools.cli import main

sys.exit(main())
