"""``python -m rlmesh._worker``: the sandbox process."""

import sys

from .main import main

sys.exit(main())
