"""Running the ``dlsys`` command in-process, as the front end's tests do."""

from dlsys.frontend.cli import main


def run_cli(argv: list[str]) -> int:
    """``main(argv)``'s exit status, whether returned or raised by argparse."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code
