"""``python -m rlmesh``: the same as the ``rlmesh`` command."""

import sys

from ._cli import main

sys.exit(main())
