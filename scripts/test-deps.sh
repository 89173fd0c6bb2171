#!/usr/bin/env bash
# Installs the Python tools the tests use into one venv outside the repo (pinned versions).
# Idempotent: a venv that already has the pinned set is left alone. Prints the venv path.
set -euo pipefail
VENV="${STREAMJOB_VENV:-$HOME/.cache/streamjob-venv}"
PINS=(check-jsonschema==0.39.0 pyyaml==6.0.2)
STAMP="$VENV/.streamjob-pins"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "${PINS[*]}" ]]; then
  echo "$VENV"; exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  echo "installing python3-venv" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq >&2 && $SUDO apt-get install -y -qq python3-venv >&2
fi
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" >&2
echo "${PINS[*]}" > "$STAMP"
echo "$VENV"
