#!/usr/bin/env bash
# Installs (once) the Python packages from PyPI that the tests use as independent peers:
# jsonschema (applies the JSON Schemas built from the OCSF schema) and py-ocsf-models (Prowler's
# pydantic models of OCSF 1.5.0), both for tests/ocsf.rs; the OpenTelemetry Python SDK, its OTLP
# encoder (opentelemetry-proto) and confluent-kafka, for tests/otlp_tansu.rs.
set -euo pipefail
python3 -c 'import jsonschema, py_ocsf_models, confluent_kafka, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.common' 2>/dev/null && exit 0
echo "installing jsonschema, py-ocsf-models, opentelemetry-sdk, opentelemetry-exporter-otlp-proto-common, confluent-kafka" >&2
python3 -m pip install --quiet --disable-pip-version-check "jsonschema==4.26.0" "py-ocsf-models==0.10.0" \
    "opentelemetry-sdk==1.45.2" "opentelemetry-exporter-otlp-proto-common==1.45.2" "confluent-kafka==2.16.1" >&2
