"""`python -m samkit.label_studio serve|precompute|config` (same as `samkit label-studio ...`)."""

import sys

from .cli import main

sys.exit(main())
