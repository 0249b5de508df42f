"""Command line: `python -m nbutils run --profile demo` (see nbutils.runner for what it does), and
`python -m nbutils parameters` (the parameter reference, docs/parameters.md), `python -m nbutils pipeline` (the
pipeline picture; `--readme README.md` writes it into the README)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nbutils", description="Workbench commands for the image-text notebooks."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the pipeline notebooks of a profile and build outputs/<run>/index.html",
        description="Run a profile's notebooks in pipeline order with papermill; write executed notebooks, "
        "HTML reports (code hidden), run.json and index.html under outputs/<run>/.",
        epilog="examples:\n"
        "  python -m nbutils run --profile demo\n"
        "  python -m nbutils run --profile demo -p 'processdata_01.source=demo?n_images=500' --run small\n"
        "  python -m nbutils run --profile demo --fresh-from train_clipcap\n"
        "  python -m nbutils run --profile my_data.yaml -p processdata_03.image_size=224",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--profile",
        default="demo",
        help="profile name in nbutils/runner/profiles/ or a path to a .yaml file (default: demo)",
    )
    run.add_argument(
        "--only",
        action="append",
        metavar="NB1,NB2",
        help="run only these notebooks of the profile (comma-separated, repeatable)",
    )
    run.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a parameter for every selected notebook declaring KEY, or NOTEBOOK.KEY=VALUE "
        "for one notebook; typed like the notebook's default (repeatable)",
    )
    run.add_argument(
        "--run",
        dest="run_name",
        metavar="NAME",
        help="run name: results go to outputs/NAME (default: the profile's `run`)",
    )
    fresh = run.add_mutually_exclusive_group()
    fresh.add_argument(
        "--fresh",
        action="store_true",
        help="rerun every selected notebook from scratch (deletes their output folders first); by default a "
        "notebook whose parameters, inputs and code are unchanged since it last succeeded is reused",
    )
    fresh.add_argument(
        "--fresh-from",
        metavar="NOTEBOOK",
        help="rerun NOTEBOOK and the selected notebooks after it from scratch; reuse the ones before",
    )
    run.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="notebooks that may run at once when neither reads the other's results, each kernel on an equal "
        "share of the CPU cores (default: the profile's `jobs`, else 1)",
    )
    run.add_argument(
        "--notebooks-dir", metavar="DIR", help="where the notebooks are (default: <repo>/notebooks)"
    )
    run.add_argument("--outputs-dir", metavar="DIR", help="where run folders go (default: <repo>/outputs)")

    parameters = commands.add_parser(
        "parameters",
        help="print the parameter reference of every pipeline notebook (markdown)",
        description="Generate the parameter reference from the notebooks' config dataclasses: per notebook "
        "in pipeline order, what it does and a table of its parameters (type, default, help).",
        epilog="example:\n  python -m nbutils parameters --output docs/parameters.md   (what `make docs` runs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parameters.add_argument(
        "--output", metavar="FILE", help="write the markdown to FILE instead of printing it"
    )
    picture = commands.add_parser(
        "pipeline",
        help="print the pipeline picture (from the stage table, nbutils/pipeline.py)",
        epilog="example:\n  python -m nbutils pipeline --readme README.md   (what `make docs` runs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    picture.add_argument("--readme", metavar="FILE", help="write the picture into FILE's pipeline block")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args, argv)
    if args.command == "parameters":
        return _parameters(args)
    if args.command == "pipeline":
        return _pipeline(args)
    return 2


def _pipeline(args) -> int:
    from . import pipeline

    if args.readme is None:
        print(pipeline.pipeline_picture())
        return 0
    path = Path(args.readme)
    path.write_text(
        pipeline.readme_with_picture(path.read_text(encoding="utf-8")), encoding="utf-8", newline="\n"
    )
    print(f"Wrote the pipeline picture into {path}")
    return 0


def _parameters(args) -> int:
    from .runner.parameter_reference import parameter_reference

    text = parameter_reference()
    if args.output is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")
    print(f"Wrote {path}")
    return 0


def _run(args, argv) -> int:
    from .runner import ParameterError, RunFailed, run_pipeline

    only = ",".join(args.only) if args.only else None
    try:
        record = run_pipeline(
            args.profile,
            only=only,
            params=args.param,
            run_name=args.run_name,
            notebooks_dir=args.notebooks_dir,
            outputs_dir=args.outputs_dir,
            command=["python", "-m", "nbutils", *argv],
            fresh=args.fresh,
            fresh_from=args.fresh_from,
            jobs=args.jobs,
        )
    except ParameterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"Report: {_index_path(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"Report: {_index_path(args, record['run'])}")
    return 0


def _index_path(args, run_name: str | None = None) -> str:
    from .runner import OUTPUTS_DIR, load_profile

    run_name = run_name or args.run_name or load_profile(args.profile)["run"]
    path = Path(args.outputs_dir or OUTPUTS_DIR).resolve() / run_name / "index.html"
    try:  # short and clickable from where the user stands
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
