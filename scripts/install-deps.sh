#!/usr/bin/env bash
# Installs the build and test dependencies from Debian bookworm packages. Idempotent: packages that
# are already installed are skipped, and apt-get is not called at all when nothing is missing.
# Used by the README's commands, .ci/run (through the test command) and docker/Dockerfile.
# librdkafka is not among them: the first CMake configure builds it (scripts/librdkafka.sh).
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --stack    also what scripts/stack needs (JRE, Maven, kcat, jq, curl)
#   scripts/install-deps.sh --runtime  only the shared libraries the binaries need at run time
#   scripts/install-deps.sh --sdk      only what building the framework and jobs needs (no tests,
#                                      benchmarks or services: the Docker images' build stage)
set -euo pipefail

build_packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libtbb-dev libabsl-dev libboost-json1.81-dev libboost1.81-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libssl-dev libsasl2-dev libzstd-dev liblz4-dev zlib1g-dev curl
  libpq-dev librocksdb-dev libspdlog-dev libfmt-dev libcli11-dev
  python3 python3-jsonschema python3-yaml python3-prometheus-client prometheus-cpp-dev libcpp-httplib-dev
  clang-14 libclang-rt-14-dev chromium
  postgresql-15 postgresql-client-15
)
stack_packages=(
  postgresql-15 postgresql-client-15 openjdk-17-jre-headless maven kcat jq curl procps iproute2 openssl
)
sdk_packages=(
  build-essential cmake ninja-build pkg-config ccache
  libtbb-dev libabsl-dev libboost-json1.81-dev libboost1.81-dev
  libssl-dev libsasl2-dev libzstd-dev liblz4-dev zlib1g-dev curl
  libpq-dev librocksdb-dev libspdlog-dev libfmt-dev libcli11-dev
  prometheus-cpp-dev libcpp-httplib-dev
)
runtime_packages=(
  libtbb12 libtbbmalloc2 libabsl20220623 libprometheus-cpp-core1.0 libcpp-httplib0.11 libboost-json1.81.0 libssl3 libsasl2-2 libzstd1 liblz4-1 zlib1g libpq5 librocksdb7.8 libspdlog1.10 libfmt9 ca-certificates
)

packages=("${build_packages[@]}")
case "${1:-}" in
  "") ;;
  --runtime) packages=("${runtime_packages[@]}") ;;
  --sdk) packages=("${sdk_packages[@]}") ;;
  --stack) packages=("${stack_packages[@]}") ;;
  --all) packages+=("${stack_packages[@]}") ;;
  *) echo "install-deps: unknown argument '$1' (use --stack, --runtime, --sdk or --all)" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo > /dev/null || ! sudo -n true 2> /dev/null; then
    echo "install-deps: ERROR: ${#missing[@]} packages are missing (${missing[*]}) and installing them needs root:" \
         "run this as root, or as a user with sudo (without a password prompt), or ask an administrator" \
         "to run: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  sudo_cmd=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
log=${TMPDIR:-/tmp}/dataflow-install-deps.$$.log
apt() {
  if ! "${sudo_cmd[@]}" apt-get "$@" > "$log" 2>&1; then
    echo "install-deps: ERROR: apt-get $1 failed:" >&2
    { grep -E '^(E|W): ' "$log" || tail -n 15 "$log"; } | sed 's/^/install-deps:   /' >&2
    echo "install-deps:   full output: $log" >&2
    exit 1
  fi
}
apt update -qq
apt install -y -qq --no-install-recommends "${missing[@]}"
rm -f "$log"
echo "install-deps: installed ${#missing[@]} packages"
