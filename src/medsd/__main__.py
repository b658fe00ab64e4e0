"""`python -m medsd` is the same as the `medsd` command."""

import sys

from medsd.cli import main

if __name__ == "__main__":  # importing the module (tools, worker processes) does not run the CLI
    sys.exit(main())
