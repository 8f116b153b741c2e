"""HTTP GETs to the stack's own endpoints: loopback servers, never via a proxy."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Without ProxyHandler({}), an http_proxy in the environment would be used."""


def get_bytes(url: str, timeout_s: float) -> bytes:
    """The body of a GET; raises OSError when the server does not answer 2xx."""
    with _opener.open(url, timeout=timeout_s) as resp:
        return bytes(resp.read())


def get_json(url: str, timeout_s: float) -> Any:
    """GET and parse JSON; raises OSError or ValueError."""
    return json.loads(get_bytes(url, timeout_s))
