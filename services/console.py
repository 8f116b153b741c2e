"""The CLI's output layer: one console for results, one for progress and errors."""

from __future__ import annotations

import sys

from rich.console import Console

out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
"""Results, on standard output; 140 columns when piped, so tables stay whole."""
err = Console(stderr=True, highlight=False)
"""Progress bars, waits and errors, on standard error."""
