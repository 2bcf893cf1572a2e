#!/usr/bin/env bash
# Install Debian's Chromium for the lessons' real-browser test (tests/lessons/test_browser.py).
# Called by `make test` before pytest. Never fails the build: without root or apt, or offline,
# it says so and the browser test skips. Playwright drives /usr/bin/chromium; nothing is downloaded
# by Playwright itself (no `playwright install`).
set -u
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "install-browser: /usr/bin/chromium missing and not root; the browser test will skip" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: /usr/bin/chromium missing and no apt-get; the browser test will skip" >&2
  exit 0
fi
echo "install-browser: installing chromium (apt-get) for the lessons' browser test" >&2
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq >/dev/null 2>&1 \
   && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; then
  echo "install-browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium installed)" >&2
else
  echo "install-browser: apt-get could not install chromium; the browser test will skip" >&2
fi
exit 0
