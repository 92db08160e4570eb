"""`python -m moerules.engine.cli` runs the CLI without the console script."""

from moerules.engine.cli.main import main

main()
