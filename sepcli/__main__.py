"""`python -m sepcli` runs the command line."""

from sepcli.cli import main

main()
