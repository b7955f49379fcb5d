#!/usr/bin/env bash
# Debian packages the test suite needs: etcd and Prometheus for the dev cluster, openssl
# for its certificates, Chromium to render the simulator's report. Installs what is
# missing when run as root with apt-get; otherwise says what to install.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v prometheus >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
else
  echo "missing packages: ${need[*]} (sudo apt-get install ${need[*]})" >&2
  exit 1
fi
