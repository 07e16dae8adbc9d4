"""The ``ekd`` command line: :func:`main` (:mod:`ekd.cli.main`) and one module per verb family."""

from .main import main, parser

__all__ = ["main", "parser"]
