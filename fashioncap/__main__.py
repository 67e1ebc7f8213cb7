"""`python -m fashioncap` is the `fashioncap` command (what `accelerate launch -m fashioncap ...` runs)."""

import sys

from fashioncap.cli import main

sys.exit(main())
