#!/usr/bin/env bash
# Debian's Chromium and ChromeDriver, for the reports' browser test (tests/test_report_browser.py).
# Where they cannot be installed the test is skipped and says why; this script never fails the run.
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install_chromium: no apt-get here; the browser test will be skipped" >&2
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo -n"
fi
echo "install_chromium: installing chromium and chromium-driver (Debian packages) ..." >&2
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1; then
    echo "install_chromium: could not install them; the browser test will be skipped" >&2
fi
exit 0
