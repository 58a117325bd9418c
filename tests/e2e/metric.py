#!/usr/bin/python3
"""Parses a Prometheus text exposition (fails if it does not parse) and prints the sum of the
samples of one metric, optionally filtered by label=value pairs: metric.py FILE NAME [k=v ...]."""
import sys

from prometheus_client.parser import text_string_to_metric_families

path, name, *filters = sys.argv[1:]
wanted = dict(f.split("=", 1) for f in filters)
with open(path) as f:
    families = list(text_string_to_metric_families(f.read()))
total = 0.0
for family in families:
    for sample in family.samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
            total += sample.value
print(int(total) if total == int(total) else total)
