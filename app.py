"""Gradio demo of a trained image classifier; runs unchanged locally and as a Hugging Face Space.

    python app.py                              # the newest finished run under outputs/
    python app.py --model outputs/cifar10      # a model folder
    MODEL_ID=user/cifar10-cnn python app.py    # a Hub id (or a folder)

On a Space, set the `MODEL_ID` variable (and an `HF_TOKEN` secret for a private model); Spaces
set GRADIO_SERVER_NAME/PORT themselves, which apply when --host/--port are not given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# A Space (or a plain checkout) may hold the package in src/ without installing it.
_SRC = Path(__file__).resolve().parent / "src"
if (_SRC / "image_classifier").is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from image_classifier.app_ui import create_app  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a trained image classifier with Gradio.")
    parser.add_argument("--model", default=None,
                        help="Model folder or Hub id. Default: the MODEL_ID environment variable, else the newest "
                             "finished run under outputs/.")
    parser.add_argument("--host", default=None,
                        help="Address to listen on (default: GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: GRADIO_SERVER_PORT, else 7860).")
    parser.add_argument("--share", action="store_true", help="Also open a public gradio.live link (off by default).")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu).")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    demo, launch_kwargs = create_app(args.model, device=args.device)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **launch_kwargs)


if __name__ == "__main__":
    main()
