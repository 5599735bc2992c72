"""Command line: `python -m image_classifier COMMAND ...` (also installed as `image-classifier`).

    python -m image_classifier push OUTPUT_DIR --hub_model_id USER/NAME [--hub_private_repo] [--hub_token T]
    python -m image_classifier deploy-space --space_id USER/NAME --hub_model_id USER/MODEL [--private] [--hub_token T]
    python -m image_classifier predict IMAGE... [--model OUTPUT_DIR_OR_HUB_ID] [--top_k K] [--json]
    python -m image_classifier explain IMAGE... [--model OUTPUT_DIR_OR_HUB_ID] [--target_class NAME] [--output_dir DIR]
    python -m image_classifier evaluate --model OUTPUT_DIR_OR_HUB_ID [--dataset D] [--split test] [--output_dir DIR]
    python -m image_classifier export --model OUTPUT_DIR --format onnx [--int8]
    python -m image_classifier robustness --model OUTPUT_DIR [--num_images N] [--output_dir DIR]
    python -m image_classifier lr-find [--lr_find_steps N] [--lr_find_dir DIR] [train.py flags]

Adding a command: write `_add_NAME(subparsers)` that adds a sub-parser with `set_defaults(run=fn)`,
where `fn(args) -> int` is the exit status, and append it to `COMMANDS`. Errors a user can fix
(`HubError`, `ConfigError`, ...; see `cli.USER_ERRORS`) are printed as one paragraph on stderr with exit
status 1, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

from .cli import user_errors

__all__ = ["main", "build_parser", "COMMANDS"]


def _add_push(subparsers) -> None:
    from .hub import add_token_argument

    parser = subparsers.add_parser(
        "push", help="push a trained model folder to the Hugging Face Hub",
        description="Push the model folder a training run wrote (OUTPUT_DIR) to a Hub model repository: create the "
                    "repository if needed, render the model card with the repository id, and upload everything "
                    "except checkpoints/ and runs/ in one commit.")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="the model folder of a finished run")
    parser.add_argument("--hub_model_id", required=True, metavar="USER/NAME",
                        help="repository to push to (NAME alone uses the token's user name)")
    parser.add_argument("--hub_private_repo", action="store_true", help="create the repository as private")
    add_token_argument(parser)
    parser.add_argument("--commit_message", default=None,
                        help="commit message; default: 'Upload model: test accuracy X'")
    parser.set_defaults(run=_push)


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    url = push_to_hub(args.output_dir, args.hub_model_id, private=args.hub_private_repo, token=args.hub_token,
                      commit_message=args.commit_message)
    print(url)
    return 0


def _add_predict(subparsers) -> None:
    from .batch_inference import add_predict_command

    add_predict_command(subparsers)


def _add_deploy_space(subparsers) -> None:
    from .space import add_deploy_space_command

    add_deploy_space_command(subparsers)


def _add_explain(subparsers) -> None:
    from .interpretation import add_explain_command

    add_explain_command(subparsers)


def _add_evaluate(subparsers) -> None:
    from .evaluation import add_evaluate_command

    add_evaluate_command(subparsers)


def _add_export(subparsers) -> None:
    from .export import add_export_command

    add_export_command(subparsers)


def _add_robustness(subparsers) -> None:
    from .robustness import add_robustness_command

    add_robustness_command(subparsers)


def _add_lr_find(subparsers) -> None:
    from .lr_finder import add_lr_find_command

    add_lr_find_command(subparsers)


# Each adds one sub-command.
COMMANDS: list[Callable] = [_add_push, _add_deploy_space, _add_predict, _add_evaluate, _add_explain, _add_robustness,
                           _add_export, _add_lr_find]


def build_parser() -> argparse.ArgumentParser:
    prog = "python -m image_classifier" if os.path.basename(sys.argv[0]) == "__main__.py" else "image-classifier"
    parser = argparse.ArgumentParser(prog=prog, description="Image classifier tools: classify, evaluate, explain and "
                                                            "export a trained model, push it to the Hub, deploy the app "
                                                            "as a Space, find a learning rate.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of `image-classifier` and `python -m image_classifier`; returns the exit status."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "pass_through", False):      # only lr-find passes train.py flags on
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.train_flags = rest
    try:
        return int(args.run(args) or 0)
    except user_errors() as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)  # one paragraph, as one line
        return 1
    except BrokenPipeError:        # `... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
