#!/usr/bin/env bash
# Installs (once) the Debian packages of the real services the tests talk to:
# rsyslog with its OpenSSL driver (the syslog receiver; liblognorm's CEF parser is built into
# its mmnormalize module), aiosmtpd (the SMTP server of the email tests), openssl (test
# certificates), prometheus_client (an independent parser of /metrics), Chromium (the web page
# test), systemd's systemd-analyze (the unit file check) and zstd (the labelled fleet of the
# detection gate is zstd-compressed).
set -euo pipefail
need=()
for p in rsyslog rsyslog-openssl openssl python3-aiosmtpd python3-prometheus-client python3-yaml \
  chromium chromium-driver systemd zstd; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing ${need[*]}" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2 \
  || { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}" >&2; }
