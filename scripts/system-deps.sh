#!/usr/bin/env bash
# Installs the Debian packages the build needs (librdkafka is built from source by the
# rdkafka crate: a C compiler, make, zlib and OpenSSL headers for TLS/SASL) if any is missing.
set -euo pipefail
NEED=(gcc make pkg-config zlib1g-dev libssl-dev openssl python3-venv shellcheck)
MISSING=()
for p in "${NEED[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || MISSING+=("$p")
done
[[ ${#MISSING[@]} -eq 0 ]] && exit 0
echo "installing ${MISSING[*]}" >&2
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${MISSING[@]}" >&2
