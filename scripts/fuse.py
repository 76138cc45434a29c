#!/usr/bin/env python
"""Main job: `python scripts/fuse.py --target openstack --llm qwen2.5-7b [--sources ...] [--rounds 3]`.

Only parses arguments and calls `fusionlog.pipeline.fuse` (the same code as `fusionlog fuse`).
"""

import sys

from fusionlog.cli import main

if __name__ == "__main__":
    sys.exit(main(["fuse", *sys.argv[1:]]))
