"""One click command per DVC stage (`mimrepro --help`); stages/cli.py registers them."""
