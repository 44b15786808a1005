#!/usr/bin/env bash
# herald's RFC 6455 conformance harness: Autobahn|Testsuite's fuzzingclient
# against a WebSocket echo server that already listens on loopback, each
# case's result compared with a committed oracle (expected.json).
#
#   tests/autobahn/run.sh ws://127.0.0.1:PORT/echo REPORT_DIR [--expect FILE | --write-expect FILE]
#   tests/autobahn/run.sh wss://127.0.0.1:PORT/echo REPORT_DIR ...
#
# With wss:// the fuzzingclient speaks TLS (Twisted with pyOpenSSL, which
# does not check the server's certificate: any test certificate will do).
#
# Autobahn|Testsuite runs only on Python 2.7. Everything it needs is built
# inside the repository, under target/autobahn/ (ignored): a Python 2.7 found
# on the machine (AUTOBAHN_PYTHON2, python2.7 on PATH, pyenv's 2.7) or else
# unpacked from Debian 11 packages into target/autobahn/py27, and a
# virtualenv with the pins of requirements-py27.txt. The first run installs
# (about 30-60 s); later runs reuse it while the pins are unchanged.
#
# Exit status: 0 every case as recorded (or, without --expect, none failed);
# 1 some case differs or failed; 2 the harness itself could not run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="$root/target/autobahn"
venv="$work/venv"
cache="$work/cache"
py27_root="$work/py27"
# Cases: the whole RFC 6455 suite, and 12.* and 13.* (permessage-deflate,
# RFC 7692: compressed messages of many sizes under every offer).
cases='["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*","12.*","13.*"]'
# AUTOBAHN_CASES='["12.1.*"]' runs some only, compared with that part of
# the oracle.
cases="${AUTOBAHN_CASES:-$cases}"
# The whole set takes 12-20 minutes on 2 cores (12.* and 13.*: 1,000
# messages of up to 128 KiB per case); the deadline only catches a hang.
deadline="${AUTOBAHN_TIMEOUT:-1800}"

die() { echo "autobahn: $*" >&2; exit 2; }

[ $# -ge 2 ] || die "usage: run.sh WS_URL REPORT_DIR [--expect FILE | --write-expect FILE]"
url="$1" report="$2"; shift 2
case "$url" in
  ws://127.*|ws://localhost[:/]*|ws://\[::1\]*) ;;
  wss://127.*|wss://localhost[:/]*|wss://\[::1\]*) ;;
  *) die "only ws:// and wss:// servers on loopback are tested, got $url" ;;
esac
command -v python3 >/dev/null || die "python3 is needed"

works_as_py27() {
  "$@" -c 'import sys, ssl, zlib; sys.exit(sys.version_info[:2] != (2, 7))' >/dev/null 2>&1
}

# A private CPython 2.7.18 from Debian 11's archive (Debian 12 has none),
# downloaded with apt-get's own state kept under target/, unpacked with
# dpkg-deb, never installed system-wide.
py27_from_debian() {
  local lib="$py27_root/usr/lib/x86_64-linux-gnu"
  if ! LD_LIBRARY_PATH="$lib" works_as_py27 "$py27_root/usr/bin/python2.7"; then
    command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
      || die "no Python 2.7 here, and no apt-get to fetch Debian's"
    local mirror
    mirror="$( { sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources
                 sed -n 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]*\)\?//p' /etc/apt/sources.list /etc/apt/sources.list.d/*.list
               } 2>/dev/null | awk '{print $1}' | grep -E '/debian/?$' | head -n1 || true)"
    [ -n "$mirror" ] || die "no Python 2.7 here, and no Debian mirror in the apt sources"
    echo "autobahn: no Python 2.7 on this machine: unpacking Debian 11's into $py27_root" >&2
    local apt="$cache/apt"
    rm -rf "$apt" "$py27_root"
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/debs" "$py27_root"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" >"$apt/sources.list"
    : >"$apt/status"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State=$apt" -o "Dir::State::status=$apt/status" -o "Dir::Cache=$apt"
                -o APT::Sandbox::User=root -o APT::Architecture=amd64)
    apt-get "${opts[@]}" -qq update >>"$cache/install.log" 2>&1 || die "apt-get update (Debian 11) failed: $cache/install.log"
    (cd "$apt/debs" && apt-get "${opts[@]}" -qq download python2.7 python2.7-minimal libpython2.7 \
       libpython2.7-minimal libpython2.7-stdlib libpython2.7-dev libssl1.1 libffi7) \
      >>"$cache/install.log" 2>&1 || die "downloading Debian 11's Python 2.7 failed: $cache/install.log"
    for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$py27_root"; done
    rm -rf "$apt"
    LD_LIBRARY_PATH="$lib" works_as_py27 "$py27_root/usr/bin/python2.7" || die "Debian's Python 2.7 does not run"
  fi
  py27="$py27_root/usr/bin/python2.7" py27_lib="$lib"
  py27_cflags="-I$py27_root/usr/include/python2.7 -I$py27_root/usr/include"
}

find_py27() {
  py27="" py27_lib="" py27_cflags=""
  local candidate
  for candidate in "${AUTOBAHN_PYTHON2:-}" "$(command -v python2.7 || true)" \
                   "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && works_as_py27 "$candidate"; then
      py27="$("$candidate" -c 'import sys; print(sys.executable)')"
      return
    fi
  done
  py27_from_debian
}

with_py27_libs() { LD_LIBRARY_PATH="${py27_lib:-}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }

install() {
  mkdir -p "$cache"
  local stamp="$venv/.installed"
  local want; want="$(cat "$here/requirements-py27.txt")"
  if [ -f "$stamp" ] && [ "$(tail -n +2 "$stamp")" = "$want" ]; then
    py27_lib="$(head -n1 "$stamp")"
    return
  fi
  find_py27
  echo "autobahn: installing Autobahn|Testsuite into $venv (Python 2.7: $py27)" >&2
  : >"$cache/install.log"
  export PIP_CACHE_DIR="$cache/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
  # virtualenv 20.21.1 is the last release that makes Python 2.7 environments.
  python3 -m pip install -q --target "$cache/virtualenv-pkg" virtualenv==20.21.1 >>"$cache/install.log" 2>&1 \
    || die "pip install virtualenv failed: $cache/install.log"
  rm -rf "$venv"
  with_py27_libs env PYTHONPATH="$cache/virtualenv-pkg" python3 -m virtualenv -q \
    --no-periodic-update --app-data "$cache/virtualenv-data" -p "$py27" "$venv" >>"$cache/install.log" 2>&1 \
    || die "creating the Python 2.7 virtualenv failed: $cache/install.log"
  with_py27_libs "$venv/bin/python" -m pip install -q --no-deps -r "$here/requirements-py27.txt" \
    >>"$cache/install.log" 2>&1 || die "pip install -r requirements-py27.txt failed: $cache/install.log"
  # wsaccel: autobahn's C UTF-8 validator and masker; the 9.* cases take
  # several times longer without it, so carry on (slower) if it fails.
  with_py27_libs env CFLAGS="${py27_cflags:-}" "$venv/bin/python" -m pip install -q --no-deps wsaccel==0.6.6 \
    >>"$cache/install.log" 2>&1 || echo "autobahn: wsaccel did not build; running in pure Python (slower)" >&2
  with_py27_libs "$venv/bin/python" -c 'import autobahntestsuite.fuzzing' >>"$cache/install.log" 2>&1 \
    || die "wstest does not import: $cache/install.log"
  { echo "${py27_lib:-}"; echo "$want"; } >"$stamp"
}

install
mkdir -p "$report"
report="$(cd "$report" && pwd)"
rm -f "$report"/index.json "$report"/herald_case_*
cat >"$report/spec.json" <<EOF
{"outdir": "$report", "options": {"failByDrop": false},
 "servers": [{"agent": "herald", "url": "$url"}],
 "cases": $cases, "exclude-cases": [], "exclude-agent-cases": {}}
EOF
echo "autobahn: running the fuzzingclient against $url (log: $report/wstest.log)" >&2
rc=0
(cd "$report" && with_py27_libs timeout -k 10 "$deadline" "$venv/bin/wstest" -m fuzzingclient -s spec.json) \
  >"$report/wstest.log" 2>&1 || rc=$?
[ "$rc" = 0 ] || { tail -n 20 "$report/wstest.log" >&2; die "wstest ended with status $rc (124: over ${deadline}s)"; }
exec python3 "$here/compare.py" "$report/index.json" --cases "$cases" "$@"
