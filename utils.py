"""Results and runs: fold tables, comparisons, learning curves, run status (`fafnet-results`
is the same; `--help`).

The command is `fafnet.cli.results`.
"""
from fafnet.cli.results import cli

if __name__ == "__main__":
    cli()
