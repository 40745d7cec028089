"""Developer tools run from the repository (not part of the installed product): python scripts/NAME.py."""
