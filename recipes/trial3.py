"""Trial 3: `accelerate launch recipes/trial3.py [--key value ...]` trains with recipes/trial3.yaml."""

from pathlib import Path

from fashioncap.train import main

if __name__ == "__main__":
    main(default_config=Path(__file__).with_suffix(".yaml"))
