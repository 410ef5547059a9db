"""`python -m qthink` runs the command line."""

from qthink.cli import main

main()
