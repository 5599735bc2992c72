"""Train an image classifier: `python train.py [config.yaml] [--flag value ...]`.

Works the same under `accelerate launch train.py ...`. See `python train.py --help` for every option.
"""

import sys

from image_classifier.cli import exit_on_user_error
from image_classifier.config import parse_config
from image_classifier.runner import run

if __name__ == "__main__":
    with exit_on_user_error():
        run(parse_config())
    sys.exit(0)
