"""There is no ``python -m pykho.fuzz``: the campaign is ``kho fuzz``."""

import sys

__all__: list[str] = []

sys.exit("use: kho fuzz [options]  (kho fuzz --help)")
