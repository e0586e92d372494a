"""`python -m app.cli`: the `stagecraft` command."""

from app.cli import main

main()
