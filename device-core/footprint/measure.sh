#!/usr/bin/env bash
# Measures device-core's footprint; the figures go into the README with this command.
#   1. RAM: exact type sizes on thumbv7em-none-eabihf (nightly's -Zprint-type-sizes).
#   2. Flash: .text of an image calling every scheduler + lock operation of a
#      Scheduler<8, 4>, built like firmware (opt-level "s", LTO, panic = abort), by llvm-size.
#   3. Instructions per operation on the host, counted by callgrind (deterministic: the same
#      binary and inputs give the same count whatever else the machine is doing).
# Needs: rustup (installs the target, llvm-tools and the nightly target), valgrind.
#
# `measure.sh --flash-budget` prints only the flash figures (2.) and fails when one is over its
# budget (scheduler + locks 4 KiB, codec + session 6 KiB): `tests/run.sh` runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=thumbv7em-none-eabihf
budget=false
case "${1:-}" in
  --flash-budget) budget=true ;;
  "") ;;
  *) echo "usage: measure.sh [--flash-budget]" >&2; exit 2 ;;
esac
if ! $budget; then
  for tool in valgrind callgrind_annotate; do
    command -v "$tool" >/dev/null || { echo "measure.sh: '$tool' not found (apt-get install valgrind)" >&2; exit 1; }
  done
fi
rustup target add "$target" >/dev/null 2>&1
rustup component add llvm-tools >/dev/null 2>&1
sysroot=$(rustc --print sysroot)
llvm_bin=$(dirname "$(find "$sysroot" -name llvm-size -type f | head -n1)")

if ! $budget; then
echo "== RAM on $target (rustc -Zprint-type-sizes)"
rustup target add --toolchain nightly "$target" >/dev/null 2>&1
touch device-core/footprint/src/main.rs
cargo +nightly rustc -q -p device-core-footprint --profile footprint --target "$target" \
  --features device --target-dir target/type-sizes -- -Zprint-type-sizes 2>/dev/null |
  grep -E 'type: `device_core::(Scheduler<8, 4>|sched::Slot|sched::locks::LockSlot|runtime::Device<8, 4, 4, 4>|runtime::Runtime<8, 4, 4>|link::Session<device_core::link::DeviceSide, 4>|runtime::Task|proto::Message|proto::Restore|link::Unacked)`' |
  sed -e 's/print-type-size type: //' -e 's/device_core::sched::Slot/task slot (sched::Slot)/' \
      -e 's/device_core::sched::locks::LockSlot/lock (sched::locks::LockSlot)/' | sort -u
echo
fi

over=0
echo "== .text on $target, opt-level s + LTO (llvm-size -A; compiler_builtins' memcpy/memclr,"
echo "   which every firmware links anyway, counted apart)"
for part in scheduler link device; do
  features=()
  [ "$part" = scheduler ] || features=(--features "$part")
  cargo build -q -p device-core-footprint --profile footprint --target "$target" "${features[@]}" 2>/dev/null
  image=target/$target/footprint/device-core-footprint
  text=$("$llvm_bin/llvm-size" -A "$image" | awk '$1==".text"{print $2}')
  builtins=0
  while read -r _ size _ name; do
    case "$name" in *compiler_builtins*|__aeabi_mem*) builtins=$((builtins + 16#$size)) ;; esac
  done < <("$llvm_bin/llvm-nm" -S -C "$image")
  case "$part" in
    scheduler) label="scheduler + locks" ;;
    link) label="codec + session" ;;
    device) label="whole Device (codec, session, runtime, scheduler)" ;;
  esac
  printf '%-52s %6d bytes (image %d, builtins %d)\n' "$label" $((text - builtins)) "$text" "$builtins"
  limit=0
  case "$part" in scheduler) limit=4096 ;; link) limit=6144 ;; esac
  if [ "$limit" -gt 0 ] && [ $((text - builtins)) -gt "$limit" ]; then
    echo "measure.sh: $label is over its budget of $limit bytes" >&2
    over=1
  fi
done
if $budget; then
  exit "$over"
fi

echo
echo "== instructions per operation on the host, Scheduler<8, 4> (valgrind --tool=callgrind)"
cargo build -q -p device-core-footprint --release
bin=target/release/device-core-footprint
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
per_call() { # workload, function, calls per iteration, label
  local file="$out/$1.out"
  [ -f "$file" ] || valgrind -q --tool=callgrind --callgrind-out-file="$file" "$bin" "$1" >/dev/null
  local iters=10000
  local ir
  ir=$(callgrind_annotate --inclusive=yes "$file" 2>/dev/null | grep -E "::host::$2[^_a-z]" | head -n1 | awk '{gsub(",","",$1); print $1}')
  [ -n "$ir" ] || { echo "measure.sh: no callgrind figure for $2" >&2; exit 1; }
  printf '%-58s %6d instructions\n' "$4" $((ir / (iters * $3)))
}
per_call pick op_next 1 "next(): pick among 8 tasks, switch"
per_call pick op_admit 1 "admit()"
per_call uncontended op_lock 1 "lock(), free lock"
per_call uncontended op_unlock 1 "unlock(), no waiter"
per_call contended op_next 3 "next() in the contended workload (avg of 3 per round)"
per_call contended op_lock 3 "lock() avg of: free (x2), blocking with inheritance (x1)"
per_call contended op_unlock 1 "unlock() handing off to a waiter, dropping the boost"
