#!/bin/sh
# Refresh the Swagger UI that /docs serves (src/ligeiro/web/static/swagger-ui/) from the
# npm registry's swagger-ui-dist. The files are committed so that `pip install` needs no
# build step and the page loads nothing from another origin; run this to change version.
#   sh scripts/vendor_swagger_ui.sh 5.35.0
set -eu
VERSION=${1:-5.35.0}
DEST=$(cd "$(dirname "$0")/.." && pwd)/src/ligeiro/web/static/swagger-ui
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack -q "swagger-ui-dist@$VERSION" >/dev/null && tar xzf "swagger-ui-dist-$VERSION.tgz")
mkdir -p "$DEST"
for file in swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css LICENSE NOTICE; do
	cp "$WORK/package/$file" "$DEST/$file"
done
echo "$VERSION" > "$DEST/VERSION"
echo "swagger-ui-dist $VERSION -> $DEST"
