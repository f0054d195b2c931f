#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the suite needs when it is missing,
# then runs every check. CI runs exactly this (.ci/run). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'tests/run.sh: %s\n' "$*" >&2; exit 1; }

THUMB_TARGETS=(thumbv6m-none-eabi thumbv7m-none-eabi thumbv7em-none-eabihf)
# Gateway builds run end to end under qemu-user (tests/tests/gateway.rs); the aarch64 one is
# also packaged and installed (tests/tests/package.rs).
GATEWAY_TARGETS=(aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-musl)
# Seconds each fuzz target runs (override for a longer local campaign).
FUZZ_SECONDS=${FUZZ_SECONDS:-40}

# One build per run: incremental compilation's caches would only cost disk (gigabytes) and time.
export CARGO_INCREMENTAL=0

step "toolchain"
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
command -v rustup >/dev/null || die "rustup not found: the thumb targets are installed with rustup"
installed=$(rustup target list --installed)
missing=()
for t in "${THUMB_TARGETS[@]}"; do
  grep -qx "$t" <<<"$installed" || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing rustup targets: ${missing[*]}"
  rustup target add "${missing[@]}"
fi
components=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$components" || rustup component add "$c"
done
# End-to-end tests run a real mosquitto and use its clients.
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] || ! command -v mosquitto_pub >/dev/null; then
  echo "installing mosquitto and mosquitto-clients"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients
fi
# The QEMU test boots device-core's firmware on an emulated Cortex-M3; its size is read
# with binutils' size for ARM.
# openssl makes the certificates of the TLS tests.
if ! command -v openssl >/dev/null; then
  echo "installing openssl"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends openssl
fi
# The DTLS tests use gnutls-cli (gnutls-bin) as a second DTLS peer besides openssl s_client
# (and openssl s_server against the device side).
if ! command -v gnutls-cli >/dev/null; then
  echo "installing gnutls-bin"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends gnutls-bin
fi
# socat makes the pseudo-terminal pairs of the serial link test.
if ! command -v socat >/dev/null; then
  echo "installing socat"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends socat
fi
# libfaketime steps the bridge's wall clock in the clock-step tests (tests/tests/clock_steps.rs).
if ! compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null; then
  echo "installing faketime (libfaketime)"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends faketime
  compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null \
    || die "faketime is installed but libfaketime.so.1 is not under /usr/lib/*/faketime/"
fi
if ! command -v qemu-system-arm >/dev/null || ! command -v arm-none-eabi-size >/dev/null; then
  echo "installing qemu-system-arm and binutils-arm-none-eabi"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends qemu-system-arm binutils-arm-none-eabi
fi
# Gateway builds: zig as C compiler and linker (downloaded with pip), the musl targets'
# standard library (tools/cross/setup); qemu-user runs them; the package test needs
# dpkg-deb, setpriv (util-linux), adduser, deb-systemd-helper and systemd-analyze.
if ! python3 -m pip --version >/dev/null 2>&1 || ! command -v qemu-aarch64-static >/dev/null \
  || ! command -v qemu-arm-static >/dev/null || ! command -v qemu-x86_64-static >/dev/null \
  || ! command -v systemd-analyze >/dev/null \
  || ! command -v deb-systemd-helper >/dev/null || ! command -v adduser >/dev/null; then
  echo "installing python3-pip, qemu-user-static, systemd (systemd-analyze), init-system-helpers and adduser"
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends python3-pip qemu-user-static systemd \
    init-system-helpers adduser
fi
tools/cross/setup "${GATEWAY_TARGETS[@]}"
# The fuzzers need the nightly toolchain (sanitizer flags) and cargo-fuzz.
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo --version

step "format"
cargo fmt --all -- --check
# The firmware is a workspace of its own (another target, another profile).
(cd device-core/firmware-qemu && cargo fmt -- --check)

step "lint"
cargo clippy --workspace --all-targets -- -D warnings
(cd device-core/firmware-qemu && cargo clippy --release --locked -- -D warnings)

step "tests"
# The end-to-end tests run the binaries as users do: build them first.
cargo build --workspace --bins
cargo test --workspace

step "device-core stays no_std and allocation-free"
if grep -rnE '^\s*(extern crate (alloc|std)|use (alloc|std)::)' device-core/src; then
  die "device-core/src names alloc or std"
fi
for t in "${THUMB_TARGETS[@]}"; do
  echo "cargo build --release -p device-core --target $t"
  cargo build --release -p device-core --target "$t"
done
# The footprint image links a whole Scheduler<8, 4> for Cortex-M4F, so a change that pulls
# in std, alloc or an unlinkable symbol fails here rather than in someone's firmware.
cargo build -p device-core-footprint --profile footprint --target thumbv7em-none-eabihf
# Flash budgets (scheduler + locks 4 KiB, codec + session 6 KiB): over one, this fails.
device-core/footprint/measure.sh --flash-budget
# The QEMU firmware (built by tests/tests/qemu.rs during `cargo test`): flash and RAM.
arm-none-eabi-size device-core/firmware-qemu/target/thumbv7m-none-eabi/release/edge-firmware-qemu

step "gateway builds (static musl, --profile gateway)"
for t in "${GATEWAY_TARGETS[@]}"; do
  started=$SECONDS
  echo "cargo build --profile gateway --target $t -p edge-bridge --bins"
  cargo build --profile gateway --target "$t" -p edge-bridge --bins
  for b in edge-bridge edge-device-sim; do
    printf '%s %s: %s bytes\n' "$t" "$b" "$(stat -c %s "target/$t/gateway/$b")"
  done
  echo "$t: built in $((SECONDS - started)) s"
done

step "gateway builds end to end under qemu-user"
cargo test -p edge-tests --test gateway -- --ignored

step "packages: Debian (arm64, two revisions: an upgrade) and the OpenHarmony tarball (armv7)"
tools/package/build deb aarch64-unknown-linux-musl 1
tools/package/build deb aarch64-unknown-linux-musl 2
tools/package/build tarball armv7-unknown-linux-musleabihf
# Installs, runs, upgrades and purges the package on this machine (as root, as CI runs).
cargo test -p edge-tests --test package -- --ignored

# fuzz DIR TARGET [cargo-fuzz options] -- [libFuzzer options]: runs one target of the cargo-fuzz
# crate in DIR for FUZZ_SECONDS.
fuzz() {
  local dir=$1 target=$2 log="target/fuzz-$2.log" runs
  shift 2
  # A crash makes cargo fuzz exit non-zero and leaves the input under fuzz/artifacts/.
  if ! (cd "$dir" && cargo +nightly fuzz run "$target" "$@" -max_total_time="$FUZZ_SECONDS") >"$log" 2>&1; then
    tail -n 40 "$log"
    die "fuzz target $target failed: see $log and $dir/artifacts/$target/"
  fi
  runs=$(grep -E '^Done [0-9]+ runs' "$log") || die "fuzz target $target printed no run count: see $log"
  echo "$target: $runs"
}

step "fuzzing device-core (${FUZZ_SECONDS} s per target)"
fuzz device-core/fuzz frame_decode --
fuzz device-core/fuzz session --

step "fuzzing the bridge (${FUZZ_SECONDS} s per target)"
# The first build takes 5 to 8 minutes on two shared cores (the bridge and its dependencies:
# MQTT client and broker, TLS, DTLS, redb), later ones seconds.
# Without AddressSanitizer (`-s none`): the code these targets reach has no unsafe code but its
# dependencies', and the engine target spends much of its time in redb, which the sanitizer
# slowed threefold (33 against 97 inputs a second on one corpus). The engine target starts with
# sequences of about a hundred operations (`-len_control=0`): grown from a few bytes, as
# libFuzzer does by default, they still held a handful of operations after three minutes.
fuzz bridge/fuzz api_parse -s none --
fuzz bridge/fuzz engine -s none -- -len_control=0 -max_len=1024
# The DTLS stack: its parsers and codecs on any bytes, and a server beside a real client
# whose datagrams the input drops, duplicates, cuts and corrupts, with clock jumps.
fuzz bridge/fuzz dtls_records -s none --
fuzz bridge/fuzz dtls_server -s none --

step "disk used by the builds"
du -sh target bridge/fuzz/target device-core/fuzz/target device-core/firmware-qemu/target \
  tools/cross/.tools 2>/dev/null || true

step "all checks passed"
