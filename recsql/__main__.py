"""`python -m recsql` runs the CLI."""

from recsql.cli import main

main()
