"""GPU: the MiniLM text pipeline served on CUDA fp32, CUDA fp16 and TensorRT fp16.

Issue 23's part 4, prepared on the CPU machine for the lent GPU machine (which reaches
no package registry: install ``ligeiro[gpu]`` wheels carried with it). For each
variant it builds a repository from ``examples/models`` (the WordPiece tokenizer, the
all-MiniLM-L6-v2 encoder with that variant's ``[runtime]``, the ``minilm`` pipeline
batching up to ``--max-batch`` sentences, two batches at once), starts ``ligeiro serve``
on it (one worker: it owns the GPU), loads it with ``ligeiro bench`` over HTTP and gRPC
at each ``--concurrency`` (one sentence per request), and samples ``nvidia-smi`` for
GPU utilisation while it does. It then times the encoder in process with ONNX Runtime on
the same GPU (batches of ``--max-batch`` tokenized sentences), and the same server on
the CPU (``cpu`` variant), and prints sentences/s, p99 and the ratios against the
in-process and CPU numbers. The issue's bar: >= 50,000 sentences/s end to end.

Run: ``python -m benchmarks.bench_gpu [--variants cuda-fp32,cuda-fp16,trt-fp16,cpu]
[--concurrency 1,64,512] [--duration 10] [--warmup 3] [--max-batch 512]
[--markdown PATH] [--json PATH]``. ``--variants cpu --duration 2`` smoke-runs it on a
machine without a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ._harness import MODELS, format_table, write_report

SENTENCE = "I love you. I like you. I am your friend."
_SERVING = re.compile(r"serving .*on http://([\d.]+):(\d+) and grpc://[\d.]+:(\d+)")
# [runtime] of the encoder per variant; the fp16 ones other than TensorRT serve the
# encoder converted by `ligeiro optimize --mode fp16`.
VARIANTS = {
    "cuda-fp32": ('providers = ["cuda"]\n', False),
    "cuda-fp16": ('providers = ["cuda"]\n', True),
    "trt-fp16": ('providers = ["tensorrt", "cuda"]\nfp16 = true\n', False),
    "cpu": ('providers = ["cpu"]\n', False),
}


def build_repository(root: Path, variant: str, max_batch: int) -> None:
    """Tokenizer, encoder (with the variant's [runtime]) and the minilm pipeline."""
    runtime, fp16 = VARIANTS[variant]
    shutil.copytree(MODELS / "text-tokenizer", root / "text-tokenizer")
    encoder = root / "minilm-encoder"
    shutil.copytree(MODELS / "minilm-encoder", encoder)
    if fp16:
        subprocess.run(
            [sys.executable, "-m", "ligeiro", "optimize", str(encoder), "--mode", "fp16",
             "--tolerance", "0.01"],
            check=True,
        )  # fmt: skip
        shutil.rmtree(encoder / "1")  # serve only the fp16 version (2)
    config = (encoder / "config.toml").read_text() if (encoder / "config.toml").exists() else ""
    (encoder / "config.toml").write_text(config + "\n[runtime]\n" + runtime)
    pipeline = root / "minilm"
    shutil.copytree(MODELS / "minilm", pipeline)
    text = (pipeline / "config.toml").read_text().split("[batching]")[0]
    # Two batches at once: one tokenizes on the CPU while the other runs on the GPU.
    text += (
        f"[batching]\nmax_batch_size = {max_batch}\nmax_queue_delay_us = 1000\n"
        "max_queue_size = 8192\ninstances = 2\nrun_on = \"thread\"\n"
    )
    (pipeline / "config.toml").write_text(text)


def start(root: Path) -> tuple[subprocess.Popen[str], str, int]:
    command = [sys.executable, "-m", "ligeiro", "serve", str(root), "--port", "0",
               "--grpc-port", "0", "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 600  # a first TensorRT build takes minutes
    log = []
    for line in process.stderr:
        log.append(line)
        match = _SERVING.search(line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()
            return process, f"{match.group(1)}:{match.group(2)}", int(match.group(3))
        if time.monotonic() > deadline:
            break
    process.kill()
    raise SystemExit("server did not start:\n" + "".join(log))


class GpuSampler:
    """nvidia-smi's utilisation, sampled every 0.2 s while a load runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "200"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            try:
                self.samples.append(float(line.split(",")[0]))
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def load(url: str, concurrency: int, duration: float, warmup: float, out: Path) -> dict:
    data = out.with_suffix(".request.json")
    data.write_text(json.dumps({"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]}))  # fmt: skip
    with GpuSampler() as gpu:
        subprocess.run(
            [sys.executable, "-m", "ligeiro", "bench", url, "minilm", "--data", str(data),
             "--concurrency", str(concurrency), "--duration", str(duration),
             "--warmup", str(warmup), "--processes", str(min(8, max(1, concurrency // 64))),
             "--json", str(out)],
            check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    level = json.loads(out.read_text())["levels"][0]
    return {
        "per_s": level["throughput_per_s"],
        "p99_ms": level["latency_ms"].get("p99"),
        "errors": sum(level["errors"].values()),
        "gpu_util": gpu.mean(),
    }


def in_process(root: Path, variant: str, batch: int, seconds: float) -> float:
    """Sentences/s of the encoder alone, in this process, on the variant's provider."""
    from ligeiro import Engine

    with Engine.from_repository(root) as engine:
        tokens = engine.infer("text-tokenizer", {"text": __import__("numpy").array(
            [SENTENCE] * batch, dtype=object)}).outputs  # fmt: skip
        engine.infer("minilm-encoder", tokens)
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            engine.infer("minilm-encoder", tokens)
            runs += 1
        return runs * batch / (time.perf_counter() - started)


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return "no GPU"
    return subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="cuda-fp32,cuda-fp16,trt-fp16,cpu")
    parser.add_argument("--concurrency", default="1,64,512")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    variants = args.variants.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        for variant in variants:
            root = Path(tmp) / variant
            build_repository(root, variant, args.max_batch)
            process, http, grpc_port = start(root)
            host = http.split(":")[0]
            try:
                urls = (("http", f"http://{http}"), ("grpc", f"grpc://{host}:{grpc_port}"))
                for protocol, url in urls:
                    for c in levels:
                        out = Path(tmp) / f"{variant}-{protocol}-{c}.json"
                        results[f"{variant} {protocol} c={c}"] = load(
                            url, c, args.duration, args.warmup, out
                        ) | {"variant": variant}
            finally:
                process.terminate()
                process.wait(60)
            results[f"{variant} in-process b={args.max_batch}"] = {
                "variant": variant,
                "per_s": in_process(root, variant, args.max_batch, args.duration),
            }
    best_in = {r["variant"]: r["per_s"] for k, r in results.items() if "in-process" in k}
    served = {k: r for k, r in results.items() if "in-process" not in k}
    cpu = max((r["per_s"] for k, r in served.items() if k.startswith("cpu ")), default=None)
    rows = []
    for key, r in results.items():
        rows.append([
            key, f"{r['per_s']:,.0f}",
            "" if r.get("p99_ms") is None else f"{r['p99_ms']:.1f}",
            "" if r.get("gpu_util") is None else f"{r['gpu_util']:.0f}%",
            "" if "in-process" in key else f"{r['per_s'] / best_in[r['variant']]:.2f}",
            "" if cpu is None or "in-process" in key else f"{r['per_s'] / cpu:.1f}",
        ])  # fmt: skip
    headers = ["run", "sentences/s", "p99 ms", "GPU util", "/ in-process", "/ best CPU"]
    header = (
        f"GPU: {gpu_name()}; date {datetime.date.today()}; command: python -m "
        f"benchmarks.bench_gpu {' '.join(sys.argv[1:])}"
    )
    print(header)
    print(format_table(headers, rows, markdown=False))
    best = max((r["per_s"] for r in served.values()), default=0.0)
    verdict = "met" if best >= 50_000 else "not met"
    print(f"best end to end: {best:,.0f} sentences/s (bar: 50,000): {verdict}")
    if args.markdown:
        table = format_table(headers, rows, markdown=True)
        write_report(args.markdown, f"{header}\n\n{table}\n")
    if args.json:
        write_report(args.json, json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
