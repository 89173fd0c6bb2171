#!/usr/bin/env bash
# Installs Debian's chromium for the job page test (worker/tests/job_page.rs drives it with
# its own --headless --screenshot/--dump-dom modes), if it is missing.
set -euo pipefail
dpkg -s chromium >/dev/null 2>&1 && exit 0
echo "installing chromium" >&2
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
