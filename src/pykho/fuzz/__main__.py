"""``python -m pykho.fuzz``: the ``kho fuzz`` sub-command on its own."""

import sys

from .campaign import main

__all__: list[str] = []

sys.exit(main())
