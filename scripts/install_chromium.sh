#!/usr/bin/env bash
# Headless Chromium from the distribution's packages, for the browser tests of `xp ui`
# (tests/test_mlflow_ui.py skips them, saying so, without it). Nothing to do when installed;
# as root with apt-get it installs Debian's `chromium`, and a failed install fails (CI).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium: not root, or no apt-get: the browser tests will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
chromium --version
