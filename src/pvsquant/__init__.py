"""pvsquant: automated quantification of enlarged perivascular spaces in clinical brain MRI."""
from __future__ import annotations

__version__ = "0.2.0"
