"""`fafnet-preprocess STEP ...`: the pre-processing commands under one name.

    fafnet-preprocess SABS --raw-dir RAW/Abdomen/RawData/Training --out-dir data_processed/sabs_CT_normalized
    fafnet-preprocess supervoxels --data-dir data_processed/sabs_CT_normalized --min-size 5000
    fafnet-preprocess superpixels --data-dir data_processed/sabs_CT_normalized --dataset SABS
    fafnet-preprocess synthetic --out data_processed/synthetic_CT_normalized --supervoxels

Each step is also a module of its own (`python -m fafnet.preprocessing.sabs --help`, ...);
`fafnet-preprocess STEP --help` shows its options.
"""
import importlib
import sys
from typing import Optional, Sequence

# step -> the module whose main(argv) runs it
STEPS = {
    "SABS": "fafnet.preprocessing.sabs",
    "CHAOST2": "fafnet.preprocessing.chaost2",
    "CMR": "fafnet.preprocessing.cmr",
    "Prostate_MRI": "fafnet.preprocessing.prostate_mri",
    "supervoxels": "fafnet.supervoxels.generate",
    # SSL-ALPNet's 2D superpixels (docs/protocol.md section 16), for pseudo_labels=superpixels
    "superpixels": "fafnet.supervoxels.superpixels",
    "synthetic": "fafnet.synthetic.__main__",
}
USAGE = f"usage: fafnet-preprocess {{{','.join(STEPS)}}} [options]  (STEP --help for its options)"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.strip().splitlines()[0])
        return 0 if argv else 2
    step, rest = argv[0], argv[1:]
    if step not in STEPS:
        print(f"{USAGE}\nfafnet-preprocess: error: unknown step {step!r}; steps: {', '.join(STEPS)}",
              file=sys.stderr)
        return 2
    status = importlib.import_module(STEPS[step]).main(rest)
    return int(status or 0)


def cli() -> None:
    """The command line (`fafnet-preprocess`)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
