"""`python -m caltech_core ...`: see caltech_core.cli.app."""

import sys

from caltech_core.cli import main

sys.exit(main())
