"""`python -m agl_cli` always runs agl, whichever package owns the `agl` script."""

from agl_cli.cli.main import main

if __name__ == "__main__":
    main()
