"""Train FAF-Net (the release's command; `fafnet-train` is the same):

    python train.py with SABS eval_fold=0
    python train.py print_config with CHAOST2

The experiment is `fafnet.cli.train`; its options are the root config.py's.
"""
from fafnet.cli.train import cli

if __name__ == "__main__":
    cli()
