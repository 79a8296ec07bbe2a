"""The ``forma`` command line: the top of the import graph. ``cli.app`` wires the command groups below it."""
