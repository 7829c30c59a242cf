#!/usr/bin/env bash
# Installs (once) the Python packages from PyPI that the tests use as independent peers:
# jsonschema (applies the JSON Schemas built from the OCSF schema) and py-ocsf-models (Prowler's
# pydantic models of OCSF 1.5.0), both for tests/ocsf.rs.
set -euo pipefail
python3 -c 'import jsonschema, py_ocsf_models' 2>/dev/null && exit 0
echo "installing jsonschema, py-ocsf-models" >&2
python3 -m pip install --quiet --disable-pip-version-check "jsonschema==4.26.0" "py-ocsf-models==0.10.0" >&2
