"""`python -m segladder` runs the command line."""

from segladder.cli import main

main()
