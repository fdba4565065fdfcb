"""``python -m dlsys``: the ``dlsys`` command, for an environment whose scripts folder is not on
PATH (a venv that is not activated)."""

import sys

from dlsys.frontend.cli import main

sys.exit(main())
