#!/bin/sh
# Debian's chromium-headless-shell, unpacked into DEST (default .venv/chromium) with every
# library it needs that this system lacks, as apt resolves them (scripts/apt_unpack.sh):
# no system install, no table of libraries of ours. DEST/headless-shell runs it with
# LD_LIBRARY_PATH set to the unpacked libraries.
# tests/integration/test_bench_html.py screenshots a `ligeiro bench --html` report with it.
set -eu

DEST=${1:-.venv/chromium}
rm -rf "$DEST"
sh "$(dirname "$0")/apt_unpack.sh" "$DEST" chromium-headless-shell
DEST=$(cd "$DEST" && pwd)

libdirs() {  # every unpacked directory holding a shared library, colon-separated
	find "$DEST/usr/lib" "$DEST/lib" -name '*.so*' -type f -printf '%h\n' 2>/dev/null \
		| grep -v "^$DEST/usr/lib/chromium" | sort -u | paste -sd: -
}

# apt's closure is what the package declares; check the loader agrees before a test finds out.
dirs=$(libdirs)
missing=$(LD_LIBRARY_PATH="$dirs" ldd "$DEST/usr/lib/chromium/chromium-headless-shell" 2>/dev/null \
	| awk '/not found/ {print $1}' | sort -u)
if [ -n "$missing" ]; then
	echo "fetch_chromium: chromium-headless-shell needs libraries its Debian package does not" \
		"declare and this system lacks: $(echo $missing)" >&2
	exit 1
fi

# The launcher: library directories relative to itself, so DEST can move.
rel=$(printf '%s\n' "$dirs" | tr ':' '\n' | sed "s|^$DEST|\$here|" | paste -sd: -)
cat >"$DEST/headless-shell" <<EOS
#!/bin/sh
here=\$(dirname "\$(readlink -f "\$0")")
LD_LIBRARY_PATH="$rel\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
	exec "\$here/usr/lib/chromium/chromium-headless-shell" "\$@"
EOS
chmod +x "$DEST/headless-shell"
"$DEST/headless-shell" --version
