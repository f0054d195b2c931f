#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the suite needs when it is missing,
# then runs every check. CI runs exactly this (.ci/run). Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'tests/run.sh: %s\n' "$*" >&2; exit 1; }

THUMB_TARGETS=(thumbv6m-none-eabi thumbv7m-none-eabi thumbv7em-none-eabihf)

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
cargo --version

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
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

step "all checks passed"
