#!/usr/bin/env bash
# The system parts the test suite needs and pip cannot install: PostgreSQL's server
# binaries (tests start their own server), PgBouncer (many workers through few server
# connections), Debian's headless chromium with its driver (the dashboard tested in a real
# browser) and a Hangul font (Korean class names in the plots). Installed with apt when we
# are root; otherwise one line names the command to run, and `make test` stops before
# running anything.
set -euo pipefail

need=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || need+=(postgresql)
[ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ -f /usr/share/fonts/truetype/nanum/NanumGothic.ttf ] || need+=(fonts-nanum)
[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "focaltune: error: the tests need ${need[*]}; install them with:" \
    "sudo apt-get install -y ${need[*]} (Debian/Ubuntu), then run make test again" >&2
  exit 2
fi
echo "system-deps: installing ${need[*]} with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
