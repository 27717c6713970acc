#!/bin/sh
# A Java 17+ for pyspark (tests/integration/test_spark.py, benchmarks/bench_score.py):
# DEST/JAVA_HOME (default .venv/java/JAVA_HOME) holds the path that JAVA_HOME should be.
#
# A `java` of version 17 or later on PATH is used as it is: only its home is recorded.
# Otherwise Debian's openjdk-17-jre-headless and what it needs that this system lacks, as
# apt resolves them, are unpacked into DEST (scripts/apt_unpack.sh: no system install, no
# package script runs); `ldd` checks that the JVM itself finds every library it needs.
# LIGEIRO_FETCH_JAVA=debian skips the PATH check (to try the download on a machine with Java).
set -eu

DEST=${1:-.venv/java}
rm -rf "$DEST"
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

major() {  # the major version of the java binary $1 ("17.0.15" -> 17, "1.8.0" -> 8)
	"$1" -version 2>&1 | sed -n 's/.* version "\([0-9][0-9.]*\).*/\1/p' | head -n 1 \
		| awk -F. '{ print ($1 == 1) ? $2 : $1 }'
}

if [ "${LIGEIRO_FETCH_JAVA:-}" != debian ] && found=$(command -v java) \
	&& [ "$(major "$found")" -ge 17 ] 2>/dev/null; then
	# bin/java's parent is the home; readlink resolves /usr/bin/java's alternatives links.
	home=$(dirname "$(dirname "$(readlink -f "$found")")")
	echo "fetch_java: using $found (Java $(major "$found")) at $home"
	printf '%s\n' "$home" >"$DEST/JAVA_HOME"
	exit 0
fi

sh "$(dirname "$0")/apt_unpack.sh" "$DEST" openjdk-17-jre-headless
home=$(find "$DEST/usr/lib/jvm" -mindepth 1 -maxdepth 1 -type d -name 'java-17-openjdk-*' | head -n 1)
test -x "$home/bin/java"

# The JRE's conf/ and lib/security/ files are absolute links into /etc/java-17-openjdk,
# which dpkg -x unpacked under DEST: point them there (the JVM will not start without
# conf/security/java.security). cacerts, made by ca-certificates-java's postinst, stays
# dangling: local Spark opens no TLS connection.
find "$home" -type l | while read -r link; do
	target=$(readlink "$link")
	case $target in
	/etc/*) [ -e "$DEST$target" ] && ln -sfn "$DEST$target" "$link" ;;
	esac
done

# Its own libraries are found through its RPATH (and libjvm.so once the launcher loaded it); the rest (libc, libz, libstdc++) every
# Debian with Python has. Say so plainly if one is missing rather than start a broken JVM.
missing=$(find "$home" -type f \( -name '*.so' -o -path '*/bin/*' \) | while read -r elf; do
	head -c 4 "$elf" | grep -q ELF || continue
	LD_LIBRARY_PATH="$home/lib:$home/lib/server" ldd "$elf" 2>/dev/null | awk '/not found/ {print $1}'
done | sort -u)
if [ -n "$missing" ]; then
	echo "fetch_java: the JVM needs libraries this system lacks: $(echo $missing)" >&2
	exit 1
fi

"$home/bin/java" -version
printf '%s\n' "$home" >"$DEST/JAVA_HOME"
