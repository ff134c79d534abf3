#!/usr/bin/env bash
# A short bounded fuzz run of every target in proxy/fuzz (seconds each) from the committed
# corpus: catches a decoder or loader regression that panics. The long runs (>= 10 million
# executions per target) are done by hand; see proxy/fuzz/README.md.
# cargo-fuzz is cached under /var/cache/mqtt-proxy-ci/cargo-fuzz; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept the -Z flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=/var/cache/mqtt-proxy-ci/cargo-fuzz
seconds=${FUZZ_SECONDS:-10}
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  mkdir -p "$root"
  cargo install cargo-fuzz --locked --root "$root"
fi
export PATH="$root/bin:$PATH" RUSTC_BOOTSTRAP=1
# The fuzz build (its own profile and flags) is kept outside the checkout, so a fresh clone
# rebuilds only the proxy crate, not every dependency.
target_dir=${FUZZ_TARGET_DIR:-/var/cache/mqtt-proxy-ci/fuzz-target}
cd proxy/fuzz
for target in codec_read users_file brokers_file session_stream; do
  mkdir -p "corpus/$target"
  # A scratch copy: new inputs found in CI are not written into the checkout.
  scratch=$(mktemp -d)
  cp -r "corpus/$target/." "$scratch/" 2>/dev/null || true
  echo "fuzz $target for ${seconds}s"
  cargo fuzz run --sanitizer none --target-dir "$target_dir" "$target" "$scratch" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -timeout=10
  rm -rf "$scratch"
done
