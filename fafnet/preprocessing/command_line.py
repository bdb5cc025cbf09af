"""The command line every pre-processing CLI shares (python -m fafnet.preprocessing.<dataset>,
fafnet-preprocess <dataset>): its arguments, its one-line errors, the MRI routes' --arithmetic."""
import argparse
import os
from typing import Callable, List, Optional, Sequence

from fafnet.io.progress import log_to_console
from fafnet.preprocessing.common import DEFAULT_MR_ARITHMETIC, MR_ARITHMETIC

CLI_EPILOG = """\
Raw volumes are read completely: a truncated or damaged file, NaN or infinite voxels, or
label values the dataset does not define end the run with one line naming the file, before
anything is written. OUT/preprocessing_manifest.json traces every output to its raw case and
files (size, sha256) and records the route and its parameters; a re-run whose raw folder or
settings no longer match it is refused, naming the difference, unless --overwrite."""


def build_parser(prog: str, description: str, raw_help: str) -> argparse.ArgumentParser:
    """The arguments every pre-processing CLI shares."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=CLI_EPILOG)
    parser.add_argument("--raw-dir", required=True, help=raw_help)
    parser.add_argument("--out-dir", required=True,
                        help="output folder for image_<i>.nii.gz, label_<i>.nii.gz and "
                             "preprocessing_manifest.json (raw case, sizes and sha256 of "
                             "the raw files, route and parameters of every output)")
    parser.add_argument("--overwrite", action="store_true",
                        help="remove every output of earlier runs and redo all volumes "
                             "(default: keep finished volumes; a run whose raw folder or "
                             "settings no longer match the manifest is refused)")
    return parser


def run_cli(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
            preprocess: Callable[[str, str, bool], List[str]], name: str) -> None:
    """Parse the shared arguments and run `preprocess(raw_dir, out_dir, overwrite)`; bad input
    (or an unreadable or unwritable file) ends the program with one line naming it (exit
    status 2, as every command's user errors) instead of a traceback."""
    args = parser.parse_args(argv)
    log_to_console()
    try:
        paths = preprocess(args.raw_dir, args.out_dir, args.overwrite)
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(err).split())}\n")
    print(f"{len(paths) // 2} {name} volumes in {args.out_dir} (raw cases in "
          f"{os.path.join(args.out_dir, 'preprocessing_manifest.json')})")


def add_arithmetic_argument(parser: argparse.ArgumentParser) -> None:
    """The MRI CLIs' --arithmetic option."""
    parser.add_argument(
        "--arithmetic", choices=MR_ARITHMETIC, default=DEFAULT_MR_ARITHMETIC,
        help="'release' (default): keep the raw pixel type, so on integer data the 99.5th-"
             "percentile clip value and the resampled values are truncated toward zero exactly "
             "as in the data the published numbers were computed on; 'float': float32 throughout")


def parse_arithmetic(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> str:
    """The --arithmetic value of `argv` (the full parse, errors and --help included, is
    `run_cli`'s)."""
    known, _ = parser.parse_known_args(argv)
    return known.arithmetic

