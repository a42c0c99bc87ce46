"""``python -m escnet.cli``: the same as the ``escnet`` command."""

import sys

from escnet.cli import main

sys.exit(main())
