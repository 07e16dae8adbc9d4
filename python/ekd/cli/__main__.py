"""``python -m ekd.cli``: the ``ekd`` command."""

import sys

from .main import main

sys.exit(main())
