"""Shared helpers under every area: errors, YAML and JSON-lines reading, atomic writes, hashing, model locations.

Nothing here imports from another area of Forma: this folder and ``schemas/`` are the bottom of the import graph.
"""

__version__ = "0.1.0"
