"""The package version: the one source of truth (pyproject.toml reads it through
``[tool.setuptools.dynamic]``). A leaf module: it imports nothing."""

__version__ = "0.1.0"
