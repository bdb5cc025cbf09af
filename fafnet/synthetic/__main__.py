"""Command line for the synthetic dataset: `python -m fafnet.synthetic --out DIR`.

Writes image_<i>.nii.gz / label_<i>.nii.gz in the normalised SABS layout and, with
--supervoxels, the supervoxel pseudo-labels so that the folder is ready to train on.
"""
import argparse
from typing import Optional, Sequence

from fafnet.synthetic.generate import generate_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fafnet.synthetic",
        description="Generate the synthetic abdominal-CT-like dataset (SABS layout and label "
                    "ids: spleen 1, kidneys 2 and 3, liver 6, stomach 7, aorta 8, IVC 9).")
    parser.add_argument("--out", required=True,
                        help="output folder (created if missing), e.g. "
                             "data_processed/synthetic_CT_normalized, where the experiments "
                             "look (<data_root>/<folder>, data_root defaulting to ./data_processed)")
    parser.add_argument("--subjects", type=int, default=30, help="number of subjects (default 30)")
    parser.add_argument("--size", type=int, default=129,
                        help="in-plane size in pixels (default 129)")
    parser.add_argument("--slices", type=int, default=28, help="slices per volume (default 28)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--supervoxels", action="store_true",
                        help="also write supervoxels_<min-size>/superpix-MIDDLE_<i>.nii.gz "
                             "(needs the compiled extension: make build)")
    parser.add_argument("--min-size", type=int, default=1000,
                        help="supervoxel minimum size in voxels (default 1000)")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate subjects that already exist (default: keep them)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the CLI; bad input (or an unwritable folder) ends it with one line and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        paths = generate_dataset(args.out, n_subjects=args.subjects, size=args.size,
                                 n_slices=args.slices, seed=args.seed, supervoxels=args.supervoxels,
                                 supervoxel_min_size=args.min_size, overwrite=args.overwrite)
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    print(f"{len(paths)} files in {args.out}")


if __name__ == "__main__":
    main()
