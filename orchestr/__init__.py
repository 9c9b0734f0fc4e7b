"""orchestr: declarative serving, arena and evaluation for chat LLMs."""

__version__ = "0.1.0"
