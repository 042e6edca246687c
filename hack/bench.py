#!/usr/bin/env python3
"""Exec/lifecycle/memory benchmark of containerd shims (driven by hack/bench.sh).

Usage (normally through hack/bench.sh, which prepares WORK and cleans up):
  bench.py --work WORK --out OUT --hack HACK --shim-dir DIR --image IMAGE.tar --cgroup CG
  (or, from hack/: python3 -m ctrbench ...)

The code is the package hack/ctrbench/ (contestants, scenarios, measurements,
report); its docstring describes the scenarios and the CPU accounting.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ctrbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
