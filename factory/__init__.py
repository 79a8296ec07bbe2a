"""Forma Data Factory: recipe-driven fitness chat data, filters with an audit trail, review, train, export, eval."""

__version__ = "0.1.0"
