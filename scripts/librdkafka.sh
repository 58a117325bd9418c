#!/usr/bin/env bash
# Builds the librdkafka the Kafka connector links, as a static library, into PREFIX (default
# build/deps/librdkafka). Idempotent: a PREFIX that holds this version is left as it is.
#
# Why not Debian's: bookworm's librdkafka 2.0.2 sends the client nonce twice in SCRAM's
# client-final message, and Kafka 4 refuses the login (librdkafka #4895, fixed in 2.6.1), so jobs
# could not log in with SASL/SCRAM-SHA-512. The source is librdkafka as vendored by the rdkafka-sys
# crate on crates.io (a registry this machine reaches), checked against its SHA-256.
#
#   scripts/librdkafka.sh [PREFIX]
#   scripts/librdkafka.sh --fetch DIR   only download the crate into DIR (for the Docker build)
# Environment:
#   DATAFLOW_RDKAFKA_CRATE  a copy of the crate file to use instead of downloading it (the Docker
#                           build, which cannot reach crates.io, gets one staged by the host)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=2.12.1
CRATE=rdkafka-sys-4.10.0+$VERSION.crate
SHA256=e234cf318915c1059d4921ef7f75616b5219b10b46e9f3a511a15eb4b56a3f77
URL=https://static.crates.io/crates/rdkafka-sys/$CRATE

verified() { echo "$SHA256  $1" | sha256sum -c --quiet - > /dev/null 2>&1; }
download() {
  echo "librdkafka: downloading $URL"
  curl -fsSL --retry 3 --max-time 300 -o "$1" "$URL" ||
    { echo "librdkafka: ERROR: could not download $URL (set DATAFLOW_RDKAFKA_CRATE to a copy of it)" >&2; exit 1; }
  verified "$1" || { echo "librdkafka: ERROR: $URL is not the expected file (SHA-256 differs from $SHA256)" >&2; exit 1; }
}

if [[ "${1:-}" == "--fetch" ]]; then
  dir=${2:?--fetch needs a directory}
  mkdir -p "$dir"
  verified "$dir/$CRATE" || download "$dir/$CRATE"
  exit 0
fi
PREFIX=${1:-$ROOT/build/deps/librdkafka}

stamp=$PREFIX/.dataflow-librdkafka
if [[ -f "$stamp" && "$(cat "$stamp")" == "$VERSION $SHA256" ]]; then
  echo "librdkafka: $VERSION present in $PREFIX"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/dataflow-librdkafka.XXXXXX")
trap 'rm -rf "$work"' EXIT
crate=${DATAFLOW_RDKAFKA_CRATE:-}
if [[ -z "$crate" ]]; then
  crate=$work/$CRATE
  download "$crate"
elif ! verified "$crate"; then
  echo "librdkafka: ERROR: DATAFLOW_RDKAFKA_CRATE=$crate is not $CRATE (SHA-256 differs from $SHA256)" >&2
  exit 1
fi
tar -xzf "$crate" -C "$work"
src=$work/rdkafka-sys-4.10.0+$VERSION/librdkafka

echo "librdkafka: building $VERSION (static) into $PREFIX"
launcher=()
if command -v ccache > /dev/null; then launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
# SCRAM and OAUTHBEARER come with SSL + SASL (cyrus, which also gives GSSAPI); no libcurl (OIDC).
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" \
  -DCMAKE_INSTALL_LIBDIR=lib -DCMAKE_POSITION_INDEPENDENT_CODE=ON "${launcher[@]}" \
  -DRDKAFKA_BUILD_STATIC=ON -DRDKAFKA_BUILD_EXAMPLES=OFF -DRDKAFKA_BUILD_TESTS=OFF \
  -DWITH_SSL=ON -DWITH_SASL=ON -DWITH_ZSTD=ON -DWITH_ZLIB=ON -DWITH_CURL=OFF -DENABLE_LZ4_EXT=ON \
  > "$work/configure.log" 2>&1 || { tail -n 30 "$work/configure.log" >&2; exit 1; }
grep -q "SASL_SCRAM" "$work/configure.log" || grep -q "WITH_SASL_SCRAM" "$work/build/generated/config.h" 2>/dev/null ||
  { echo "librdkafka: ERROR: configured without SASL/SCRAM (libssl-dev and libsasl2-dev are needed)" >&2; exit 1; }
cmake --build "$work/build" -j "${DATAFLOW_JOBS:-2}" > "$work/build.log" 2>&1 || { tail -n 30 "$work/build.log" >&2; exit 1; }
rm -rf "$PREFIX"
cmake --install "$work/build" > /dev/null
echo "$VERSION $SHA256" > "$stamp"
echo "librdkafka: $VERSION installed in $PREFIX"
