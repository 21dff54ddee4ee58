"""``python -m deft_llm.data`` (and ``deft-llm data``): make SynthMER, build and push Uni-MER.

Examples::

    python -m deft_llm.data synth out/synthmer --clips 200 --fps 100
    python -m deft_llm.data build out/uni-mer --source synthmer --clips 500
    python -m deft_llm.data build out/uni-mer --source casme2=/data/CASME2 --source samm=/data/SAMM \\
        --skip-missing
    python -m deft_llm.data push out/uni-mer you/uni-mer          # private by default
"""

from __future__ import annotations

import argparse
import json
import sys

from .readers import read_dataset
from .synthmer import DIFFICULTY, SynthConfig, SynthMER, write_synthmer
from .uni_mer import BuildConfig, build_uni_mer, push_to_hub


def _synth_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("SynthMER")
    g.add_argument("--clips", type=int, default=200, help="number of SynthMER clips")
    g.add_argument("--size", type=int, default=128, help="SynthMER frame size (px)")
    g.add_argument("--fps", type=int, default=100, help="frames per second (30-200)")
    g.add_argument("--subjects", type=int, default=16, help="number of identities")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--difficulty", choices=list(DIFFICULTY), default="medium")
    g.add_argument("--label-noise", type=float, default=0.0,
                   help="share of clips with one annotation error (spurious or missing AU)")
    g.add_argument("--wrinkles", type=float, default=1.0,
                   help="strength of the FACS appearance changes (wrinkles, furrows); 0: motion only")
    g.add_argument("--crop-jitter", type=float, default=1.0,
                   help="per-subject face scale and offset in the crop; 0: every face aligned")


def _synth_config(args) -> SynthConfig:
    return SynthConfig(image_size=args.size, fps=args.fps, n_subjects=args.subjects, seed=args.seed,
                       difficulty=args.difficulty, label_noise=args.label_noise,
                       wrinkles=args.wrinkles, crop_jitter=args.crop_jitter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deft-llm data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write SynthMER clips (lossless video + labels + true flow)")
    synth.add_argument("out", help="output folder")
    _synth_args(synth)

    build = sub.add_parser("build", help="build Uni-MER in Hub layout (resumes an interrupted build)")
    build.add_argument("out", help="output folder")
    build.add_argument("--source", action="append", default=[], metavar="NAME[=ROOT]",
                       help="casme2=ROOT, samm=ROOT, smic_hs=ROOT, casme3_a=ROOT, 4dme=ROOT, "
                            "synthmer=FOLDER (written by 'synth') or synthmer (generated on the fly)")
    build.add_argument("--skip-missing", action="store_true",
                       help="skip clips with missing frames (listed in the card) instead of failing")
    build.add_argument("--casme2-frames", choices=["auto", "raw", "cropped"], default="auto")
    build.add_argument("--image-size", type=int, default=128)
    build.add_argument("--flow-method", choices=["dis", "tvl1", "farneback"], default="dis")
    build.add_argument("--flow-store-size", type=int, default=64)
    build.add_argument("--min-snr", type=float, default=2.0)
    build.add_argument("--min-px", type=float, default=0.12)
    build.add_argument("--shard-size", type=int, default=100)
    build.add_argument("--test-subjects", default="", help="comma-separated subjects for the test split")
    build.add_argument("--name", default="Uni-MER", help="pretty name in the dataset card")
    build.add_argument("--overwrite", action="store_true", help="replace a different build in OUT")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    _synth_args(build)

    push = sub.add_parser("push", help="upload a built folder to the Hub (private by default)")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--public", action="store_true", help="make the repo public")
    push.add_argument("--allow-public-licensed", action="store_true",
                      help="allow a public upload of data derived from licensed datasets")
    push.add_argument("--token", default=None)
    return parser


def _records(args):
    records, skipped, details = [], [], {}
    on_missing = "skip" if args.skip_missing else "error"
    for source in args.source or ["synthmer"]:
        name, _, root = source.partition("=")
        name = name.strip().lower()
        if name == "synthmer" and not root:
            synth = SynthMER(_synth_config(args), args.clips)
            records.extend(synth.records())
            details["synthmer"] = synth.difficulty()
            continue
        if not root:
            raise SystemExit(f"--source {name} needs a root folder: --source {name}=/path/to/{name}")
        kwargs = {"on_missing": on_missing}
        if name == "casme2":
            kwargs["frames"] = args.casme2_frames
        result = read_dataset(name, root, **kwargs)
        print(result.report().splitlines()[0], file=sys.stderr)
        records.extend(result.records)
        skipped.extend(result.skipped)
    return records, skipped, details


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        report = write_synthmer(args.out, args.clips, _synth_config(args))
        print(json.dumps(report, indent=1))
    elif args.command == "build":
        records, skipped, details = _records(args)
        config = BuildConfig(image_size=args.image_size, flow_method=args.flow_method,
                             flow_store_size=args.flow_store_size, min_snr=args.min_snr,
                             min_px=args.min_px, shard_size=args.shard_size,
                             test_subjects=tuple(s for s in args.test_subjects.split(",") if s),
                             pretty_name=args.name)
        report = build_uni_mer(records, args.out, config, progress=not args.quiet,
                               overwrite=args.overwrite, skipped_sources=skipped,
                               extra_card=details or None)
        print(report.summary())
    else:
        repo = push_to_hub(args.folder, args.repo_id, private=not args.public, token=args.token,
                           allow_public_licensed=args.allow_public_licensed)
        print(f"uploaded {args.folder} to https://huggingface.co/datasets/{repo} "
              f"({'public' if args.public else 'private'})")
    return 0
