"""Trial 6: `accelerate launch recipes/trial6.py [--key value ...]` trains with recipes/trial6.yaml."""

import sys
from pathlib import Path

from fashioncap.commands.train import main

if __name__ == "__main__":
    sys.exit(main(default_config=Path(__file__).with_suffix(".yaml")))
