"""pvsquant: automated quantification of enlarged perivascular spaces in clinical brain MRI."""
from __future__ import annotations

try:  # written at install time by setuptools-scm from the git tag: names the exact code
    from ._version import __version__
except ImportError:  # a source tree that was never installed
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("pvsquant")
    except PackageNotFoundError:
        __version__ = "0+unknown"
