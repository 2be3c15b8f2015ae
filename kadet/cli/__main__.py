"""``python -m kadet.cli``: the ``kadet`` command."""

import sys

from kadet.cli import main

sys.exit(main())
