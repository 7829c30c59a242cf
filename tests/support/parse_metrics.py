"""Parses a /metrics exposition (stdin) with the Python prometheus_client parsers, an independent
implementation of the format: the OpenMetrics parser (strict) and the classic Prometheus text
parser. Prints the families as JSON; exits non-zero with the parser's error on bad input."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as prometheus_text

text = sys.stdin.read()
out = {}
for fam in openmetrics(text):
    out[fam.name] = {
        "type": fam.type,
        "samples": [[s.name, s.labels, s.value] for s in fam.samples],
    }
classic = {fam.name: fam.type for fam in prometheus_text(text.replace("# EOF\n", ""))}
print(json.dumps({"openmetrics": out, "classic": classic}))
