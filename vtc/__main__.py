"""`python -m vtc` runs the command line."""

from vtc.cli import run

run()
