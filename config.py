"""The experiments' options live in `fafnet/cli/config.py` (named configs per dataset, the
defaults of the authors' scripts, validation). Choose them on the command line:

    python train.py print_config with CHAOST2        # every option and its value
    python train.py with CHAOST2 eval_fold=1 device=cuda

This module re-exports that one for code written against the release's layout.
"""
from fafnet.cli.config import *  # noqa: F401,F403
