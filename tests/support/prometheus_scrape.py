"""A real Prometheus scrape for tests: one HTTP GET of /metrics on 127.0.0.1, parsed."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    """``{(sample name, sorted labels): value}``; OSError when nothing listens."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def try_scrape(port: int) -> Samples:
    """Like :func:`scrape`, but empty while nothing listens yet."""
    try:
        return scrape(port)
    except OSError:
        return {}
