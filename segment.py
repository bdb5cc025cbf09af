"""Segment new scans with a trained checkpoint (`fafnet-segment` is the same; `--help`).

The command is `fafnet.cli.segment`.
"""
from fafnet.cli.segment import cli

if __name__ == "__main__":
    cli()
