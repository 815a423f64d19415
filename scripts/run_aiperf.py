#!/usr/bin/env python3
"""``promptkit bench``, under its old name: kept so existing commands keep working.

    python scripts/run_aiperf.py [--env-file PATH] [--dry-run] [--allow-repeats]

is ``promptkit bench`` with the same options, settings (``.env.example``) and exit
codes; see :mod:`promptkit.commands.bench`. It needs promptkit installed
(``pip install -e .`` in this checkout).
"""

import sys

from promptkit.cli import cli

if __name__ == "__main__":
    cli(["bench", *sys.argv[1:]], prog_name="promptkit")
