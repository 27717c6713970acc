#!/bin/sh
# What CI does, on this machine: clone the current commit into a new temporary folder
# (no .venv, no models, nothing unpacked) and run `make test` there; print the wall time.
# Uncommitted changes are not in the clone: commit first. KEEP=1 keeps the folder.
#
#   sh scripts/fresh_check.sh        (or: make fresh-check)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$root" rev-parse HEAD)
work=$(mktemp -d "${TMPDIR:-/tmp}/ligeiro-fresh.XXXXXX")
cleanup() { [ "${KEEP:-}" = 1 ] && echo "fresh_check: kept $work" || rm -rf "$work"; }
trap cleanup EXIT

if [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then
	echo "fresh_check: uncommitted changes are not checked (the clone is of $commit)" >&2
fi
git clone -q --no-hardlinks "$root" "$work/ligeiro"
git -C "$work/ligeiro" checkout -q "$commit"
start=$(date +%s)
status=0
(cd "$work/ligeiro" && make test) || status=$?
end=$(date +%s)
echo "fresh_check: make test on a fresh clone of $commit exited $status in $((end - start)) s"
exit "$status"
