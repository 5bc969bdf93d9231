"""``python -m tinytown``: the ``tinytown`` command (see :mod:`tinytown.cli`)."""

import sys

from .cli import main

sys.exit(main())
