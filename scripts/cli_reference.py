"""Print the command reference, docs/cli.md, made from the Click commands.

    python scripts/cli_reference.py > docs/cli.md
"""

from __future__ import annotations

import sys

from promptkit.cli import cli
from promptkit.cli.help import reference

if __name__ == "__main__":
    sys.stdout.write(reference(cli))
