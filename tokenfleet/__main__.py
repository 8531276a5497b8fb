"""`python -m tokenfleet` runs the same CLI as the `tokenfleet` console script."""

from tokenfleet.cli.main import cli

if __name__ == "__main__":
    cli()
