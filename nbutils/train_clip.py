"""Command-line entry for contrastive training: the same code the train_clip notebook runs.

    python -m nbutils.train_clip --run-dir outputs/demo --output-dir outputs/demo/train_clip
    torchrun --nproc_per_node=4 -m nbutils.train_clip --run-dir outputs/flickr --model OFA-Sys/chinese-clip-vit-base-patch16
    accelerate launch -m nbutils.train_clip --run-dir outputs/flickr --model compose \\
        --vision-model google/vit-base-patch16-224 --text-model hfl/chinese-roberta-wwm-ext

Every keyword of `nbutils.clip_training.train_clip` is an option (`--batch-size 48`, `--lock-image true`).
`--batch-size` is per process: the contrastive loss gathers features across processes, so the
negatives per step are batch_size x processes.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from .clip_training import train_clip


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nbutils.train_clip", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="run folder holding processdata_03's output")
    parser.add_argument("--output-dir", default="", help="where the model and summary go (default: <run-dir>/train_clip)")
    for name, param in inspect.signature(train_clip).parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or name == "callbacks":
            continue
        kind = type(param.default)
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=param.default,
                            type=_parse_bool if kind is bool else kind, help=f"default: {param.default!r}")
    return parser


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    run_dir, output_dir = args.pop("run_dir"), args.pop("output_dir")
    result = train_clip(run_dir, output_dir or f"{run_dir}/train_clip", **args)
    print(json.dumps(result.summary, indent=2, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
