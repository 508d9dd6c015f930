#!/usr/bin/env python3
"""Thin entry point for the build step: ``python build_appliance.py [SPEC] [-o OUT] [options]``.

Equivalent to ``chiron build``; defaults to bundle/appliance.toml -> dist/chiron.pex and to the tool
wheels made by ``make tool-wheels``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    sys.path.insert(0, str(HERE / "src"))
    os.environ.setdefault("CHIRON_TOOL_WHEELS", str(HERE / "build" / "tool-wheels"))
    from chiron.cli import main

    main(["build", *sys.argv[1:]])
