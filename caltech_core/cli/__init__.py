"""`caltech-studio` / `python -m caltech_core`: the command-line interface (the parser and entry point in app.py,
one module per group of commands)."""

from caltech_core.cli.app import main as main
