"""The experiments' options live in `fafnet/cli/config.py` (the experiments, their own options,
a named config per dataset) and `fafnet/cli/ingredients/` (the options by concern: dataset,
episodes, model, optimisation, runtime, evaluation, with the defaults of the authors' scripts
and the rules of their values). Choose them on the command line, by flat name or by path:

    python train.py print_config with CHAOST2                   # every option and its value
    python train.py with CHAOST2 eval_fold=1 device=cuda
    python train.py with CHAOST2 dataset.eval_fold=1 runtime.device=cuda    # the same

This module re-exports `fafnet.cli.config` for code written against the release's layout.
"""
from fafnet.cli.config import *  # noqa: F401,F403
