"""The public import path for handler authors: ``from hermes.handlers import JobContext``.

The job runner lives in :mod:`hermes.jobrunner`; this module only re-exports what a
``python`` route or job function receives, so that handler code does not depend on the
runner's layout.
"""

from __future__ import annotations

from hermes.jobrunner.handlers import JobContext

__all__ = ["JobContext"]
