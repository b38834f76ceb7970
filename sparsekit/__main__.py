"""``python -m sparsekit``: see :mod:`sparsekit.cli`."""

import sys

from .cli import main

sys.exit(main())
