"""Reading a server's Prometheus endpoint from a load test: what the server itself counted.

    before = scrape("http://127.0.0.1:9100/metrics")
    ...load...
    after = scrape("http://127.0.0.1:9100/metrics")
    counted(before, after)   # {"requests": {"Score OK": 812, ...}, "refusals": {"Score RESOURCE_EXHAUSTED queue_full": 95}}

The client sees a status code per call; the server's counters say why it refused
(`embstack_refusals_total{method,code,reason}`), so an overload run reports both.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

COUNTERS = {"embstack_requests_total": ("method", "code"), "embstack_refusals_total": ("method", "code", "reason")}


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, ...], float]:
    """The request and refusal counters of one scrape: (sample name, *label values) → value.
    Raises OSError when the endpoint does not answer."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        text = r.read().decode()
    out: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = COUNTERS.get(s.name)
            if labels is not None:
                method = s.labels.get("method", "").rsplit("/", 1)[-1]
                out[(s.name, method, *(s.labels.get(k, "") for k in labels[1:]))] = s.value
    return out


def counted(before: dict[tuple[str, ...], float], after: dict[tuple[str, ...], float]) -> dict[str, dict[str, int]]:
    """What the server counted between two scrapes: answers by "method code" and refusals
    by "method code reason" (zero entries left out)."""
    out: dict[str, dict[str, int]] = {"requests": {}, "refusals": {}}
    for key, value in after.items():
        n = int(round(value - before.get(key, 0.0)))
        if n:
            out["requests" if key[0] == "embstack_requests_total" else "refusals"][" ".join(key[1:])] = n
    return out
