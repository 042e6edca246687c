"""`python3 -m ctrbench ...` (from hack/): the same as hack/bench.py."""

import sys

from .cli import main

sys.exit(main())
