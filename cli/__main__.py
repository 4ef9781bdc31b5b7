"""``python -m cli ARGS`` = ``xr0 ARGS``."""

import sys

from cli import main

sys.exit(main())
