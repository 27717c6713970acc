#!/bin/sh
# Unpack Debian PACKAGE... (always) and every dependency of theirs that this system lacks into DEST,
# with the closure computed by apt itself (no table of ours): `apt-get install
# --download-only` resolves what is not installed and downloads it into DEST/deb, and
# `dpkg -x` unpacks each file. Nothing is installed system-wide and no package script
# runs (so no service starts); the one system change is `apt-get update` when the
# package lists are stale. apt needs root (or sudo) for its lock.
#
#   sh scripts/apt_unpack.sh DEST PACKAGE...
#
# scripts/fetch_chromium.sh, scripts/fetch_java.sh and the Makefile's Prometheus use it.
set -eu

if [ $# -lt 2 ]; then
	echo "usage: apt_unpack.sh DEST PACKAGE..." >&2
	exit 2
fi
DEST=$1
shift
mkdir -p "$DEST/deb/partial"
DEST=$(cd "$DEST" && pwd)

sudo=
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo=sudo
	else
		echo "apt_unpack: apt-get needs root to download $*; run as root or install sudo" >&2
		exit 1
	fi
fi

download() {  # the packages themselves (installed or not) and what they need that is not
	(cd "$DEST/deb" && apt-get download -q "$@") &&
		$sudo apt-get install -y -q --download-only --no-install-recommends \
			-o Dir::Cache::archives="$DEST/deb" "$@"
}

# Stale lists name versions the mirror no longer has (a security update moved them):
# refresh them once and ask again.
if ! download "$@" >"$DEST/deb/apt.log" 2>&1; then
	echo "apt_unpack: refreshing the package lists (apt-get update)"
	$sudo apt-get update -qq
	if ! download "$@" >"$DEST/deb/apt.log" 2>&1; then
		cat "$DEST/deb/apt.log" >&2
		echo "apt_unpack: apt-get could not download $*" >&2
		exit 1
	fi
fi

count=0
for deb in "$DEST"/deb/*.deb; do
	[ -e "$deb" ] || continue
	dpkg -x "$deb" "$DEST"
	count=$((count + 1))
done
echo "apt_unpack: $* -> $count package(s) unpacked into $DEST"
rm -rf "$DEST/deb" "$DEST/usr/share/doc" "$DEST/usr/share/lintian" "$DEST/usr/share/man"
