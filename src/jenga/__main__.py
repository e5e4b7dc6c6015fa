"""``python -m jenga``: the same as the ``jenga`` command."""

import sys

from .cli import main

sys.exit(main())
