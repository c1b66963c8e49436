"""`python -m cogql` is the `cogql` command."""

from .cli import main

main()
