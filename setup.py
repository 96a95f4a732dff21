"""Build hook: every wheel carries the code generated from proto/.

``authz_service/gen`` is not committed. When proto/ is present (a checkout or
an sdist), the code is generated before setuptools looks for packages, so a
wheel built from a clean checkout has it. The generators come from
``[build-system] requires``.
"""

from __future__ import annotations

import runpy
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
if (ROOT / "proto").is_dir():
    generate = runpy.run_path(str(ROOT / "scripts" / "gen_proto.py"))["main"]
    if generate() != 0:
        raise SystemExit("generating authz_service/gen from proto/ failed")

setup()
