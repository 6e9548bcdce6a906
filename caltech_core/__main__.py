"""`python -m caltech_core ...`: see caltech_core.cli.commands."""

import sys

from caltech_core.cli.commands import main

sys.exit(main())
