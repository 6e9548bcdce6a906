"""`caltech-studio` / `python -m caltech_core`: the command-line interface."""

from caltech_core.cli.commands import main as main
