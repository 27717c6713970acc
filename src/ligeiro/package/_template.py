"""The source of the module a packaged model installs (``iris_model``), as text.

``MODULE`` becomes ``<import name>/__init__.py`` with the constants filled in;
``MAIN`` becomes ``__main__.py``: ``python -m iris_model predict`` (and the pyz's
``./iris.pyz predict``/``serve``). Both use only the standard library and the vendored
``_ligeiro`` runtime, so the package needs numpy, onnxruntime and msgspec alone.
"""

from __future__ import annotations

__all__ = ["MAIN", "MODULE"]

MODULE = '''\
"""{summary}

Packaged by ligeiro {ligeiro_version} (``ligeiro package``). The model loads on the
first call and is kept; every function is safe to call from several threads::

    import {import_name}
    {import_name}.predict([{example}])

``predict``/``predict_proba`` take a pandas DataFrame, a list of dicts of named
features, a dict of columns or a 2-D array; ``infer`` takes raw tensors
(``{{name: array}}``). Bad input raises ``InvalidInputError`` naming the column and row.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ._ligeiro.errors import InvalidInputError, LigeiroError

__all__ = [
    "MODEL_NAME",
    "MODEL_SHA256",
    "MODEL_VERSION",
    "InvalidInputError",
    "LigeiroError",
    "__version__",
    "infer",
    "metadata",
    "model",
    "predict",
    "predict_proba",
]

__version__ = {version!r}
MODEL_NAME = {model_name!r}
MODEL_VERSION = {model_version!r}
MODEL_SHA256 = {sha256!r}
MODEL_DIR = Path(__file__).resolve().parent / "models" / MODEL_NAME
# The model's signature, features and labels, read without loading it.
metadata: dict[str, Any] = json.loads({metadata!r})

_lock = threading.Lock()
_loaded: list[Any] = []


def model() -> Any:
    """The loaded model (a ``ligeiro.Model``), loaded on the first call."""
    if not _loaded:
        with _lock:
            if not _loaded:
                from ._ligeiro.model import load

                _loaded.append(load(MODEL_DIR, MODEL_VERSION))
    return _loaded[0]


def predict(x: Any) -> Any:
    """Labels (for a classifier) or values, one per row of ``x``."""
    return model().predict(x)


def predict_proba(x: Any) -> Any:
    """Class probabilities, ``[rows, classes]``."""
    return model().predict_proba(x)


def infer(inputs: Any, outputs: Any = None) -> Any:
    """Raw tensors in (``{{input name: array}}``), raw tensors out."""
    return model().infer(inputs, outputs)
'''

MAIN = '''\
"""``{command} predict | serve | metadata``: the packaged model from a shell.

``predict --data JSON`` (or ``--file F``, or standard input) takes what
``POST /v1/models/{model_name}:predict`` takes and prints its answer; CSV (a header of
feature names, then rows) on standard input prints one CSV row per input row.
``serve`` runs ``ligeiro serve`` on this model (the V2 API), and needs ligeiro's server,
which the ``.pyz`` format carries; its options are ``ligeiro serve``'s.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys

from . import MODEL_DIR, MODEL_NAME, metadata, model
from ._ligeiro.errors import InvalidInputError, LigeiroError


def _csv(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        raise InvalidInputError("CSV input: expected a header of feature names and rows")
    header, body = rows[0], rows[1:]
    columns: dict[str, list[float | None]] = {{name: [] for name in header}}
    for i, row in enumerate(body, start=1):
        if len(row) != len(header):
            raise InvalidInputError(
                f"CSV row {{i}}: {{len(row)}} values for {{len(header)}} columns"
            )
        for name, cell in zip(header, row):
            try:
                columns[name].append(float(cell) if cell.strip() else None)
            except ValueError:
                raise InvalidInputError(
                    f"CSV row {{i}} column {{name!r}}: expected a number, got {{cell!r}}"
                ) from None
    loaded = model()
    labels = loaded.predict(columns).tolist()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\\n")
    try:  # predict took these columns: only "no probabilities" can be refused here
        probabilities = loaded.predict_proba(columns).tolist()
    except InvalidInputError:
        probabilities = None
    if probabilities is not None:
        names = loaded.labels or [str(j) for j in range(len(probabilities[0]))]
        writer.writerow(["label", *(f"probability_{{n}}" for n in names)])
        writer.writerows([label, *p] for label, p in zip(labels, probabilities))
    else:
        writer.writerow(["prediction"])
        writer.writerows([v] for v in labels)
    return out.getvalue()


def _predict(args: argparse.Namespace) -> None:
    if args.data is not None:
        text = args.data
    elif args.file is not None:
        with open(args.file, encoding="utf-8") as file:
            text = file.read()
    else:
        text = sys.stdin.read()
    if text.lstrip()[:1] in ("{{", "["):
        sys.stdout.write(model().predict_json(text.encode()).decode() + "\\n")
    else:
        sys.stdout.write(_csv(text))


def _serve(rest: list[str]) -> None:
    try:
        from ligeiro.cli import main as ligeiro_main
    except ImportError:
        print(
            "error: serve needs ligeiro's server: pip install ligeiro "
            "(a package built with --format pyz carries it)",
            file=sys.stderr,
        )
        sys.exit(2)
    ligeiro_main(["serve", str(MODEL_DIR), "--model-name", MODEL_NAME, *rest])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        _serve(argv[1:])
        return
    parser = argparse.ArgumentParser(prog={command!r}, description=__doc__.split("\\n\\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="predict from JSON or CSV")
    predict.add_argument("--data", help="the request as JSON text")
    predict.add_argument("--file", help="read the request from a file")
    commands.add_parser("serve", help="serve the V2 API (ligeiro serve's options)")
    commands.add_parser("metadata", help="print the model's metadata")
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            _predict(args)
        else:
            print(json.dumps(metadata, indent=2))
    except LigeiroError as exc:
        print(f"error: {{exc}}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
'''
