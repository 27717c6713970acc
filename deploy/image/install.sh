#!/bin/sh
# The image's Python environment: a venv at PREFIX holding ligeiro from SOURCE (the
# project folder or a wheel) and only its runtime dependencies (no extras: no convert,
# spark or torch), at the versions constraints.txt pins. The Dockerfile's build stage
# runs it, and tests/integration/test_image.py runs it on this machine and serves from
# the result, so the two build the same environment.
#
#   sh deploy/image/install.sh PREFIX SOURCE
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 PREFIX SOURCE" >&2
    exit 2
fi
prefix=$1
source=$2
constraints=$(dirname "$0")/../../constraints.txt
python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
    -c "$constraints" "$source"
# pip (and setuptools, which venvs of Python before 3.12 add) are not needed to serve.
"$prefix/bin/python" -m pip uninstall --quiet --yes pip setuptools
"$prefix/bin/ligeiro" version
