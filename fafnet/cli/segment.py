"""Segment your own scans with a trained FAF-Net checkpoint (docs/protocol.md section 18; docs/segmenting.md).

    python segment.py --checkpoint runs/train/3 --support-image S.nii.gz --support-mask S_labels.nii.gz \\
        --query Q.nii.gz --out results/

The support is one scan with a label map of the structures to find (one or several labels,
each segmented on its own); every query scan gets one label map in its own geometry. The
checkpoint's saved config says which dataset and pre-processing it was trained with; the
same pre-processing is applied here with the project's own code (fafnet/preprocessing/routes.py, then the
experiments' in-plane resampling and z-score through fafnet.episodes.volumes.VolumeReader), and
the prediction is resampled back onto each query's grid (fafnet.io.resample.resample_onto).

Pairing of query and support slices: with --query-range, the evaluation's chunks over the
range; without, every query slice with the support slice at the same relative position,
then the largest 3D component per label (fafnet/inference/pairing.py).

Outputs in --out, per query <name> (its file name without .nii[.gz], or its DICOM folder's
name): <name>_labels.nii.gz, <name>_prob_label<L>.nii.gz (--probabilities), <name>_overview.png,
<name>.json. They are written once every query has been segmented; bad input ends the
command with one line naming it (exit status 2) and nothing written. --query, --label and
--reference may be given several times (their values add up). A label whose predicted volume
is more than VOLUME_WARNING_FACTOR (3) times larger or smaller than the support mask's volume
of that label gets a warning in the log and in <name>.json's "warnings" (labels segmented over
the whole scan, not over a --query-range).
"""
import argparse
import sys
from typing import Optional, Sequence

from fafnet.cli.names import program_name
from fafnet.inference.segment import RANGE_SYNTAX, VOLUME_WARNING_FACTOR, QueryResult, run
from fafnet.io.progress import log_to_console
from fafnet.preprocessing.common import MR_ARITHMETIC
from fafnet.preprocessing.routes import PREPROCESS_CHOICES
from fafnet.runtime.devices import DEVICE_CHOICES

PROG = "fafnet-segment"   # the usage's name when the command's own name says nothing
USER_ERRORS = (ValueError, OSError, ArithmeticError)

EPILOG = f"""\
example:
  python segment.py --checkpoint runs/train/3 \\
      --support-image atlas.nii.gz --support-mask atlas_labels.nii.gz \\
      --query patient7.nii.gz patient8_dicom/ --reference patient7_labels.nii.gz patient8_labels.nii.gz \\
      --query-range 0:1=12:30 --out results/

--query-range {RANGE_SYNTAX} (repeatable): the slices of a query to segment, as the 0-based
slice indices of the query file (its k-th slice is k; ITK-SNAP shows k + 1), Z0 included and
Z1 excluded as in Python, either end may be left out (12: or :30). LABEL= restricts it to one
label, QUERY: to the query at that 0-based position of --query; the most specific range
applies. With a range, the evaluation's pairing: support slices at 1/6, 1/2, 5/6 of the
support's slices holding the label, the range cut into 3 chunks, chunk i with support slice i.
Without one, every query slice is paired with the support slice at the same relative position
of the scan (the nearest that holds the label), and only the largest 3D component of each label
is kept (--largest-component auto). Where labels overlap, the most probable one is written.

--query, --label and --reference add up when repeated (--query a.nii.gz --query b.nii.gz is
--query a.nii.gz b.nii.gz). A label predicted more than {VOLUME_WARNING_FACTOR:g}x larger or smaller than
its volume in the support mask gets a warning (log and <name>.json): organs of one kind differ
less than that between adults, so such a prediction is likely wrong (not checked for labels
segmented over a --query-range, which may cover part of the organ). Errors end the command
with one line and exit status 2.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program_name(PROG), description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--checkpoint", required=True,
                        help="a snapshot of this project's training (.pth) or a training run folder")
    parser.add_argument("--support-image", required=True, help="NIfTI file or folder of one DICOM series")
    parser.add_argument("--support-mask", required=True,
                        help="label map (NIfTI) on the support image's grid; every non-zero value is a label")
    parser.add_argument("--query", required=True, nargs="+", action="extend",
                        help="NIfTI files or DICOM series folders (repeatable)")
    parser.add_argument("--out", required=True, help="output folder (created; files of the same names are replaced)")
    parser.add_argument("--label", type=int, nargs="+", action="extend",
                        help="labels of the mask to segment (default: all; repeatable)")
    parser.add_argument("--query-range", action="append", default=[], metavar=RANGE_SYNTAX,
                        help="slices to segment (see below; default: the whole scan)")
    parser.add_argument("--reference", nargs="+", action="extend",
                        help="one ground-truth label map per query, on its grid, in --query's order: Dice "
                             "per label is printed (repeatable)")
    parser.add_argument("--preprocess", choices=PREPROCESS_CHOICES, default="auto",
                        help="route: the checkpoint dataset's pre-processing; none: the scans are pre-processed "
                             "already (as in a dataset folder); auto (default): none for a scan that has the "
                             "route's output grid, else route")
    parser.add_argument("--arithmetic", choices=MR_ARITHMETIC,
                        help="MRI routes' arithmetic (default: the training data's manifest, else release)")
    parser.add_argument("--largest-component", choices=("auto", "on", "off"), default="auto",
                        help="keep only the largest 3D component of each label (auto: on without a range)")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write each label's foreground probability (float32)")
    parser.add_argument("--device", default="auto", help=DEVICE_CHOICES)
    parser.add_argument("--batch-size", type=int,
                        help="query slices per forward pass (default: 1 on a CPU, 8 on a GPU)")
    parser.add_argument("--amp-bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        help="channels-last inputs (default: on a CPU only)")
    return parser


def summary(result: QueryResult) -> str:
    """Console lines of one query: each label's volume, and Dice when a reference was given."""
    lines = [f"{result.query.prepared.scan.path}:"]
    for label, plan in result.query.plans.items():
        line = f"  label {label}: {result.volume_ml(label):.2f} ml ({plan.pairing.mode} pairing)"
        if label in result.dice:
            line += f", Dice {result.dice[label]:.4f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log_to_console()
    try:
        results = run(args)
    except USER_ERRORS as err:
        print(f"{parser.prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for result in results:
        print(summary(result))
    print(f"outputs in {args.out}")
    return 0


def cli() -> None:
    """The command line (`fafnet-segment`, and segment.py at the repository root)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
