"""``python -m actors.cli``: the same as the ``skald`` console script."""

import sys

from actors.cli import main

sys.exit(main())
