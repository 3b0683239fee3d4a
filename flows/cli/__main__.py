"""`python -m flows.cli ...`: the `sage` command."""

from flows.cli import main

main()
