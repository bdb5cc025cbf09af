"""Evaluate FAF-Net with the 1-way 1-shot protocol (the release's command; `fafnet-evaluate`
is the same):

    python test.py with SABS eval_fold=0 checkpoint=runs/train/1

The experiment is `fafnet.cli.evaluate`; its options are the root config.py's.
"""
from fafnet.cli.evaluate import cli

if __name__ == "__main__":
    cli()
