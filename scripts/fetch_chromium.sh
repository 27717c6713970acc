#!/bin/sh
# Debian's chromium-headless-shell, unpacked into DEST (default .venv/chromium) with the
# shared libraries it needs that this system lacks: no system install, no root after the
# download. DEST/headless-shell runs it with LD_LIBRARY_PATH set to the unpacked libraries.
# tests/integration/test_bench_html.py screenshots a `ligeiro bench --html` report with it.
#
# The libraries are found the way the loader does: `ldd` on every unpacked ELF file, each
# "not found" soname mapped to its Debian (bookworm) package, repeated until ldd finds all.
set -eu

DEST=${1:-.venv/chromium}
rm -rf "$DEST"
mkdir -p "$DEST/deb"
DEST=$(cd "$DEST" && pwd)

download() {  # apt-get download PACKAGE... into $DEST/deb, refreshing the lists once if stale
	(cd "$DEST/deb" && { apt-get download -q "$@" 2>/dev/null \
		|| { apt-get update -qq && apt-get download -q "$@"; }; })
}

# soname -> bookworm package, for every library in chromium-headless-shell's closure that a
# system may lack (the ones a stock bookworm has are listed too, for a slimmer base image).
package_of() {
	case $1 in
	libopenh264.so.7) echo libopenh264-7 ;;
	libdouble-conversion.so.3) echo libdouble-conversion3 ;;
	libopus.so.0) echo libopus0 ;;
	libharfbuzz-subset.so.0) echo libharfbuzz-subset0 ;;
	libharfbuzz.so.0) echo libharfbuzz0b ;;
	libXNVCtrl.so.0) echo libxnvctrl0 ;;
	libpulse.so.0 | libpulse-simple.so.0 | libpulsecommon-*.so) echo libpulse0 ;;
	libFLAC.so.12) echo libflac12 ;;
	libminizip.so.1) echo libminizip1 ;;
	libogg.so.0) echo libogg0 ;;
	libsndfile.so.1) echo libsndfile1 ;;
	libasyncns.so.0) echo libasyncns0 ;;
	libvorbis.so.0) echo libvorbis0a ;;
	libvorbisenc.so.2) echo libvorbisenc2 ;;
	libmpg123.so.0) echo libmpg123-0 ;;
	libmp3lame.so.0) echo libmp3lame0 ;;
	libglib-2.0.so.0 | libgobject-2.0.so.0 | libgio-2.0.so.0 | libgmodule-2.0.so.0)
		echo libglib2.0-0 ;;
	libnspr4.so | libplc4.so | libplds4.so) echo libnspr4 ;;
	libnss3.so | libnssutil3.so | libsmime3.so) echo libnss3 ;;
	libatk-1.0.so.0) echo libatk1.0-0 ;;
	libatspi.so.0) echo libatspi2.0-0 ;;
	libdbus-1.so.3) echo libdbus-1-3 ;;
	libjpeg.so.62) echo libjpeg62-turbo ;;
	libdav1d.so.6) echo libdav1d6 ;;
	libX11.so.6) echo libx11-6 ;;
	libX11-xcb.so.1) echo libx11-xcb1 ;;
	libXcomposite.so.1) echo libxcomposite1 ;;
	libXdamage.so.1) echo libxdamage1 ;;
	libXext.so.6) echo libxext6 ;;
	libXfixes.so.3) echo libxfixes3 ;;
	libXrandr.so.2) echo libxrandr2 ;;
	libXrender.so.1) echo libxrender1 ;;
	libXi.so.6) echo libxi6 ;;
	libXau.so.6) echo libxau6 ;;
	libXdmcp.so.6) echo libxdmcp6 ;;
	libxcb.so.1) echo libxcb1 ;;
	libxkbcommon.so.0) echo libxkbcommon0 ;;
	libgbm.so.1) echo libgbm1 ;;
	libdrm.so.2) echo libdrm2 ;;
	libwayland-server.so.0) echo libwayland-server0 ;;
	libfontconfig.so.1) echo libfontconfig1 ;;
	libfreetype.so.6) echo libfreetype6 ;;
	libpng16.so.16) echo libpng16-16 ;;
	libbrotlidec.so.1 | libbrotlicommon.so.1) echo libbrotli1 ;;
	libgraphite2.so.3) echo libgraphite2-3 ;;
	libexpat.so.1) echo libexpat1 ;;
	libasound.so.2) echo libasound2 ;;
	libudev.so.1) echo libudev1 ;;
	libbsd.so.0) echo libbsd0 ;;
	libmd.so.0) echo libmd0 ;;
	libffi.so.8) echo libffi8 ;;
	libpcre2-8.so.0) echo libpcre2-8-0 ;;
	libstdc++.so.6) echo libstdc++6 ;;
	*) return 1 ;;
	esac
}

libdirs() {  # every unpacked directory holding a shared library, colon-separated
	find "$DEST/usr/lib" "$DEST/lib" -name '*.so*' -type f -printf '%h\n' 2>/dev/null \
		| grep -v "^$DEST/usr/lib/chromium" | sort -u | paste -sd: -
}

missing() {  # sonames some unpacked ELF file needs and the loader cannot find
	dirs=$(libdirs)
	find "$DEST/usr/lib" -type f \( -name '*.so*' -o -perm -u+x \) | while read -r elf; do
		head -c 4 "$elf" | grep -q ELF || continue
		LD_LIBRARY_PATH="$dirs" ldd "$elf" 2>/dev/null | awk '/not found/ {print $1}'
	done | sort -u
}

download chromium-headless-shell chromium-common
for deb in "$DEST"/deb/*.deb; do dpkg -x "$deb" "$DEST"; done

round=0
while sonames=$(missing) && [ -n "$sonames" ]; do
	round=$((round + 1))
	if [ "$round" -gt 8 ]; then
		echo "fetch_chromium: still missing after 8 rounds: $sonames" >&2
		exit 1
	fi
	packages=
	for so in $sonames; do
		if ! pkg=$(package_of "$so"); then
			echo "fetch_chromium: no Debian package known for $so (add it to package_of)" >&2
			exit 1
		fi
		packages="$packages $pkg"
	done
	packages=$(printf '%s\n' $packages | sort -u)
	echo "fetch_chromium: $(echo $sonames) -> $(echo $packages)"
	rm -f "$DEST"/deb/*.deb
	# shellcheck disable=SC2086
	download $packages
	for deb in "$DEST"/deb/*.deb; do dpkg -x "$deb" "$DEST"; done
done

# The launcher: library directories relative to itself, so DEST can move.
rel=$(libdirs | tr ':' '\n' | sed "s|^$DEST|\$here|" | paste -sd: -)
cat >"$DEST/headless-shell" <<EOF
#!/bin/sh
here=\$(dirname "\$(readlink -f "\$0")")
LD_LIBRARY_PATH="$rel\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
	exec "\$here/usr/lib/chromium/chromium-headless-shell" "\$@"
EOF
chmod +x "$DEST/headless-shell"
rm -rf "$DEST/deb" "$DEST/usr/share/doc" "$DEST/usr/share/lintian"
"$DEST/headless-shell" --version
