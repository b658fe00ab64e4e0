"""`python -m medsd` is the same as the `medsd` command."""

from medsd.cli import run

if __name__ == "__main__":  # importing the module (tools, worker processes) does not run the CLI
    run()
