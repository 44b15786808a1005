#!/usr/bin/env bash
# Builds target/uws/uws-server, the uWebSockets reference server that
# herald-bench runs as the server `uws` (bench/run.sh --servers herald,uws).
#   bench/uws/build.sh                           # clones uWebSockets (pinned)
#   UWS_SRC=/path/to/uWebSockets bench/uws/build.sh
# UWS_SRC: a uWebSockets checkout with uSockets in it (UWS_SRC/uSockets).
# Without it the pinned commit below is cloned into target/uws/src, with
# the one submodule it needs (uSockets, at the commit uWebSockets pins).
# No SSL (-DLIBUS_NO_SSL) and no compression (-DUWS_NO_ZLIB): neither
# OpenSSL, zlib nor libdeflate is needed, only a C/C++20 compiler (g++ 12
# or clang 15 and later). LTO and -O3 as uSockets' and uWebSockets' own
# builds use; no -march=native, as herald's release build.
# Skips the build when the binary is newer than server.cpp.
set -euo pipefail
cd "$(dirname "$0")/../.."

UWS_REPO=${UWS_REPO:-https://github.com/uNetworking/uWebSockets}
UWS_COMMIT=66dcff3dd48f0c19dd1703426365d062039321d0

out=target/uws
bin=$out/uws-server
server=bench/uws/server.cpp
CC=${CC:-cc}
CXX=${CXX:-c++}

if [[ -x $bin && $bin -nt $server ]]; then
    echo "$bin is up to date" >&2
    echo "$bin"
    exit 0
fi

if [[ -n ${UWS_SRC:-} ]]; then
    src=$UWS_SRC
else
    src=$out/src
    if [[ ! -e $src/.git ]]; then
        rm -rf "$src"
        git clone --quiet "$UWS_REPO" "$src"
    fi
    git -C "$src" checkout --quiet "$UWS_COMMIT"
    git -C "$src" submodule update --init --quiet uSockets
fi
if [[ ! -f $src/src/App.h || ! -f $src/uSockets/src/libusockets.h ]]; then
    echo "build.sh: $src is not uWebSockets with uSockets inside" >&2
    exit 1
fi

obj=$out/obj
rm -rf "$obj"
mkdir -p "$obj"
jobs=${JOBS:-2}
# uSockets: C only (the eventing back end is epoll; crypto/*.c and quic.c
# compile to nothing without SSL and QUIC).
printf '%s\n' "$src"/uSockets/src/*.c "$src"/uSockets/src/eventing/*.c "$src"/uSockets/src/crypto/*.c |
    xargs -P "$jobs" -I{} sh -c \
        'f="$1"; "$2" -std=c11 -O3 -flto -DLIBUS_NO_SSL -I"$3" -c "$f" -o "$4/$(basename "$f" .c).o"' \
        _ {} "$CC" "$src/uSockets/src" "$obj"
"$CXX" -std=c++20 -O3 -flto -DLIBUS_NO_SSL -DUWS_NO_ZLIB \
    -I"$src/src" -I"$src/uSockets/src" \
    -c "$server" -o "$obj/server.o"
"$CXX" -O3 -flto="$jobs" "$obj"/*.o -o "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
