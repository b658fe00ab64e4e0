"""`python -m medsd` is the same as the `medsd` command."""

import sys

from medsd.cli import main

sys.exit(main())
