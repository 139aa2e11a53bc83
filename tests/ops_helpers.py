"""Reading a server's Prometheus metrics the way the monitoring does: over HTTP."""

from __future__ import annotations

from typing import Any

import treq
from conftest import with_timeout
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(server: Any) -> int:
    return int(server.service.getServiceNamed("metrics").port.getHost().port)


async def scrape(port: int, pool: Any = None) -> tuple[str, Samples]:
    """The exposition text of ``GET /metrics``, and its samples by (name, labels)."""
    response = await with_timeout(treq.get(f"http://127.0.0.1:{port}/metrics", pool=pool))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4")
    text = (await with_timeout(treq.content(response))).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample; a missing one fails the test with the names that exist."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        raise AssertionError(f"no sample {name}{labels}; have {sorted({n for n, _ in samples if name in n})}")
    return samples[key]
