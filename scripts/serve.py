#!/usr/bin/env python
"""Serve a trained FusionLog detector over HTTP: `python scripts/serve.py --model DIR --port 8000`.

The same as `fusionlog serve`; the bearer token comes from `--token` or the FUSIONLOG_TOKEN environment
variable (prefer the variable: a command line is visible to other users).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fusionlog.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
