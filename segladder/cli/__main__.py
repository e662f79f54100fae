"""`python -m segladder.cli` runs the command line."""

from segladder.cli import main

main()
