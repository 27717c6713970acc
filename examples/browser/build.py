"""A static page that runs a model folder's ``model.onnx`` in the browser (onnxruntime-web).

    .venv/bin/python examples/browser/build.py --out build/browser          # the site
    .venv/bin/python examples/browser/build.py --out build/browser --serve 8080

writes ``index.html`` and ``model.mjs`` (this folder), onnxruntime-web's WebAssembly
build (``ort/``, from the npm registry: ``npm ci`` here when ``node_modules`` is
missing, the version package-lock.json pins), the model's ``model.onnx`` and
``model.json`` (``ligeiro.load``'s metadata: features, labels, outputs). Any static file
host serves it; ``--serve`` serves it on 127.0.0.1 with the MIME types a browser
insists on for ``.mjs`` and ``.wasm``. The model must take one ``[-1, N]`` float input
(named features) and give a label output, as iris does.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ORT_DIST = HERE / "node_modules" / "onnxruntime-web" / "dist"
# The WebAssembly-only ES module build, and the runtime it loads.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
TYPES: Final = {
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
}


def build(model_dir: Path, out: Path) -> Path:
    """Write the site for ``model_dir`` into ``out``; returns ``out``."""
    sys.path.insert(0, str(ROOT / "src"))
    import ligeiro

    if not all((ORT_DIST / name).is_file() for name in ORT_FILES):
        command = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
        print(f"$ (cd {HERE} && {' '.join(command)})", file=sys.stderr)
        subprocess.run(command, cwd=HERE, check=True)
    with ligeiro.load(model_dir) as model:
        meta = {**model.metadata, "sha256": model.sha256}
        onnx = model.directory / "model.onnx"
    if meta["features"] is None or meta["label_output"] is None:
        raise SystemExit(f"{model_dir}: this page needs named features and a label output")
    (out / "ort").mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "model.mjs"):
        shutil.copyfile(HERE / name, out / name)
    for name in ORT_FILES:
        shutil.copyfile(ORT_DIST / name, out / "ort" / name)
    shutil.copyfile(onnx, out / "model.onnx")
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {  # noqa: RUF012 (the base class's own attribute, replaced)
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        **TYPES,
    }

    def log_message(self, format: str, *args: object) -> None:
        pass


def server(site: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A static server of ``site`` on 127.0.0.1 (``port`` 0: a free one), not started."""
    handler = functools.partial(Handler, directory=str(site))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "examples" / "models" / "iris")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "browser")
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve the site on 127.0.0.1")
    options = parser.parse_args()
    site = build(options.model, options.out)
    print(f"wrote {site}")
    if options.serve is not None:
        httpd = server(site, options.serve)
        print(f"serving on http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            httpd.serve_forever()


if __name__ == "__main__":
    main()
