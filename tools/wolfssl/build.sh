#!/usr/bin/env bash
# Build wolfSSL (with DTLS 1.3) for the interop tests and benchmarks.
#
#   tools/wolfssl/build.sh            build if needed, print the install prefix
#   tools/wolfssl/build.sh --print    only print the prefix of an existing build (exit 1 if none)
#
# The upstream source comes from Debian's source package (the .orig tarball of
# Debian unstable; bookworm's wolfSSL predates DTLS 1.3).  Nothing of wolfSSL
# is kept in this repository: the tarball, the build tree and the binaries live
# in a cache directory outside it ($TCPLS_WOLFSSL_CACHE, default
# /var/cache/tcpls-wolfssl), one subdirectory per version, reused when present.
#
# On success the last line of stdout is the build directory; the example
# binaries are <dir>/examples/client/client, <dir>/examples/server/server and
# <dir>/examples/benchmark/tls_bench.  Build logs go to <dir>.log.
set -euo pipefail

CACHE="${TCPLS_WOLFSSL_CACHE:-/var/cache/tcpls-wolfssl}"
SUITE="${TCPLS_WOLFSSL_SUITE:-sid}"
MIRROR="${TCPLS_WOLFSSL_MIRROR:-http://deb.debian.org/debian}"
CONFIGURE_FLAGS=(
    --enable-dtls13 --enable-dtls --enable-tls13 --enable-curve25519
    --enable-psk --enable-dtlscid --enable-session-ticket --enable-earlydata
    --enable-keylog-export --enable-dtls-frag-ch
    --disable-shared --enable-static --disable-crypttests
)

log() { echo "wolfssl-build: $*" >&2; }

have_build() {
    local dir="$1"
    [ -x "$dir/examples/client/client" ] && [ -x "$dir/examples/server/server" ] \
        && [ -f "$dir/.tcpls-built" ]
}

newest_build() {
    local d
    for d in $(ls -1d "$CACHE"/wolfssl-* 2>/dev/null | sort -rV); do
        if have_build "$d"; then echo "$d"; return 0; fi
    done
    return 1
}

if [ "${1:-}" = "--print" ]; then
    newest_build
    exit $?
fi

mkdir -p "$CACHE"
# Serialise concurrent runs (several checkouts on one machine share the cache).
exec 9>"$CACHE/.lock"
flock 9

if [ -z "${TCPLS_WOLFSSL_REFRESH:-}" ] && dir="$(newest_build)"; then
    log "cached build $dir"
    echo "$dir"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]} (apt-get)"
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" libc6-dev >/dev/null
fi

# A private apt configuration: the deb-src entry for unstable is used only by
# this script and never touches the system's sources or binary package lists.
APT_DIR="$CACHE/apt"
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/archives/partial" "$APT_DIR/parts"
echo "deb-src $MIRROR $SUITE main" >"$APT_DIR/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APT_DIR/sources.list"
    -o "Dir::Etc::SourceParts=$APT_DIR/parts"
    -o "Dir::State::Lists=$APT_DIR/lists"
    -o "Dir::Cache::Archives=$APT_DIR/archives"
    -o "APT::Sandbox::User=root"
)
log "fetching the wolfssl source package index ($SUITE)"
apt-get "${APT_OPTS[@]}" -qq update >/dev/null
SRC_DIR="$CACHE/src"
mkdir -p "$SRC_DIR"
(
    cd "$SRC_DIR"
    # Only the upstream tarball is needed: ask apt for the URIs and fetch that one file.
    uri_line="$(apt-get "${APT_OPTS[@]}" source --print-uris -qq wolfssl | grep -E "\.orig\.tar\.[a-z0-9]+'" | head -1)"
    [ -n "$uri_line" ] || { log "no orig tarball found for wolfssl in $SUITE"; exit 1; }
    uri="$(echo "$uri_line" | cut -d"'" -f2)"
    name="$(echo "$uri_line" | awk '{print $2}')"
    if [ ! -s "$name" ]; then
        log "downloading $name"
        apt-get "${APT_OPTS[@]}" source --download-only -qq wolfssl >/dev/null 2>&1 \
            || { command -v curl >/dev/null && curl -fsSL -o "$name" "$uri"; } \
            || python3 -c 'import sys,urllib.request;urllib.request.urlretrieve(sys.argv[1],sys.argv[2])' "$uri" "$name"
    fi
    echo "$name" >"$SRC_DIR/.latest"
)
tarball="$SRC_DIR/$(cat "$SRC_DIR/.latest")"
version="$(basename "$tarball" | sed -E 's/^wolfssl_([^/]+)\.orig\.tar\..*$/\1/')"
dir="$CACHE/wolfssl-$version"
if have_build "$dir"; then
    log "cached build $dir"
    echo "$dir"
    exit 0
fi
rm -rf "$dir" "$dir.tmp"
mkdir -p "$dir.tmp"
tar -xf "$tarball" -C "$dir.tmp" --strip-components=1
logf="$dir.log"
log "building wolfssl $version in $dir (log: $logf)"
(
    cd "$dir.tmp"
    if [ ! -x configure ]; then
        command -v autoreconf >/dev/null || apt-get install -y -qq autoconf automake libtool >/dev/null
        ./autogen.sh
    fi
    ./configure "${CONFIGURE_FLAGS[@]}"
    make -j"$(nproc)"
    # The benchmark tool is not built by default.
    if [ -f examples/benchmark/tls_bench.c ] && [ ! -x examples/benchmark/tls_bench ]; then
        make examples/benchmark/tls_bench || true
    fi
) >"$logf" 2>&1 || { log "build failed, see $logf"; tail -20 "$logf" >&2; exit 1; }
mv "$dir.tmp" "$dir"
touch "$dir/.tcpls-built"
log "built $dir"
echo "$dir"
