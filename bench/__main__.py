"""`python -m bench` from the repository root (the installed package is bss2_backend.bench)."""
import sys

from bss2_backend.bench.cli import main

sys.exit(main())
