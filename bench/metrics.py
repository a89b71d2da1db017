"""One sample from a service's /metrics, read with prometheus_client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample(url: str, name: str, timeout_s: float = 10.0, **labels: str) -> float | None:
    """The value of the first sample called `name` whose labels include `labels` (a subset: in
    multiprocess mode a gauge also carries its process's pid), or None when there is none."""
    text = httpx.get(url, timeout=timeout_s).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and labels.items() <= found.labels.items():
                return found.value
    return None
