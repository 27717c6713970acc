"""Federated learning on Flower with ligeiro serving each round's model under load.

Iris is split across K devices non-IID (each holds mostly one class); a generic model
(version 1) is served by ``ligeiro serve --model-control poll`` (or ``explicit``: each
change then loads through the repository API with an admin token) while a load generator
sends requests; Flower's simulation runs R rounds of FedAvg (or FedProx); each round's
model becomes the next version, serves a canary share, and is promoted only if its
federated evaluation is no worse than the served one's. Prints one line per round.

    python examples/federated/run.py --rounds 3 --clients 3 --repository /tmp/fl [--json OUT]

Needs ``pip install 'ligeiro[federated]' scikit-learn`` (iris ships with scikit-learn).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from ligeiro.client import Client
from ligeiro.errors import LigeiroError

MODEL = "iris-federated"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
_SERVING = re.compile(rb"serving .*on http://([\d.]+):(\d+)")


def split(seed: int, clients: int, dominance: float = 0.8):
    """Held-out rows, public rows (for the scaler and version 1), and per-device rows."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    test, public, pool = order[:30], order[30:39], order[39:]
    shares: list[list[int]] = [[] for _ in range(clients)]
    for label in range(3):
        rows = [i for i in pool if y[i] == label]
        owners = [c for c in range(clients) if c % 3 == label] or [label % clients]
        cut = int(len(rows) * dominance)
        for j, row in enumerate(rows[:cut]):
            shares[owners[j % len(owners)]].append(row)
        for j, row in enumerate(rows[cut:]):
            shares[j % clients].append(row)
    return x, y, test, public, [np.array(s) for s in shares]


def start_server(
    repository: Path, control: str = "poll", admin_token: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "ligeiro", "serve", str(repository), "--port", "0",
               "--grpc-port", "0", "--workers", "1", "--model-control", control]  # fmt: skip
    # The token goes in the environment, which no process listing shows.
    env = {**os.environ, **({"LIGEIRO_ADMIN_TOKEN": admin_token} if admin_token else {})}
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
    )
    assert process.stderr is not None
    for line in process.stderr:
        match = _SERVING.search(line)
        if match:
            threading.Thread(target=process.stderr.read, daemon=True).start()  # keep draining
            return process, f"http://{match.group(1).decode()}:{int(match.group(2))}"
    raise SystemExit(f"ligeiro serve exited with {process.wait()} before serving")


class Load:
    """Requests to the model (no version: the canary split applies), in threads."""

    def __init__(self, url: str, rows: np.ndarray, connections: int = 2) -> None:
        self.url, self.rows = url, rows
        self.answered = self.failed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(connections)
        ]

    def _run(self) -> None:
        with Client(self.url, timeout_s=10) as client:
            i = 0
            while not self._stop.is_set():
                row = self.rows[i % len(self.rows) : i % len(self.rows) + 1]
                i += 1
                try:
                    client.infer(MODEL, {"float_input": row})
                    ok = True
                except (LigeiroError, OSError, EOFError) as exc:
                    ok = False
                    self.errors.append(repr(exc)[:200])
                with self._lock:
                    self.answered += ok
                    self.failed += not ok

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.answered, self.failed

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--model", choices=["softmax", "mlp"], default="softmax")
    parser.add_argument("--strategy", choices=["fedavg", "fedprox"], default="fedavg")
    parser.add_argument("--poison-round", type=int, default=0,
                        help="in this round device 0 sends garbage parameters")  # fmt: skip
    parser.add_argument("--canary-percent", type=int, default=10)
    parser.add_argument("--model-control", choices=["poll", "explicit"], default="poll",
                        help="how the server learns of each version: by watching the files "
                        "(poll) or through the repository API with an admin token")  # fmt: skip
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="how much higher the candidate's federated loss may be")  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1 or args.clients < 2:
        parser.error(
            f"expected --rounds >= 1 and --clients >= 2, got {args.rounds}, {args.clients}"
        )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg, FedProx
    from flwr.simulation import run_simulation

    from ligeiro.federated import Classifier, Partition, Publisher, ServingStrategy, client_app

    x, y, test, public, _ = split(args.seed, args.clients)
    model = Classifier(
        features=4, classes=3, hidden=(8,) if args.model == "mlp" else (),
        mean=tuple(map(float, x[public].mean(0))), scale=tuple(map(float, x[public].std(0) + 1e-3)),
        seed=args.seed,
    )  # fmt: skip
    folder = args.repository / MODEL
    if folder.exists():
        raise SystemExit(f"{folder} exists: give a --repository without a {MODEL!r} folder")
    # Version 1: the generic model, from the few public rows the server holds.
    generic = model.train(model.initial(), x[public], y[public], epochs=1, learning_rate=0.05)
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(model.to_onnx(generic, sample=x[test]))
    (folder / "config.toml").write_text(
        f'features = {json.dumps(FEATURES)}\nlabels = ["setosa", "versicolor", "virginica"]\n'
    )

    seed, clients = args.seed, args.clients

    def load_partition(context: Context) -> Partition:  # runs on the device
        x_, y_, _, _, shares_ = split(seed, clients)
        rows = shares_[int(context.node_config["partition-id"])]
        cut = max(1, int(len(rows) * 0.8))
        return Partition(x_[rows[:cut]], y_[rows[:cut]], x_[rows[cut:]], y_[rows[cut:]])

    poison = args.poison_round

    def on_update(
        server_round: int, params: list[np.ndarray], context: Context
    ) -> list[np.ndarray]:
        """Device 0 answers garbage parameters in --poison-round (to show the gate)."""
        if server_round == poison and int(context.node_config["partition-id"]) == 0:
            rng = np.random.default_rng(server_round)
            return [rng.normal(scale=50.0, size=p.shape).astype(np.float32) for p in params]
        return params

    app = client_app(model, load_partition, epochs=5, learning_rate=0.1, on_update=on_update)
    token = secrets.token_urlsafe(16) if args.model_control == "explicit" else None
    process, url = start_server(args.repository, args.model_control, token)
    rows_out: list[dict[str, object]] = []
    print(f"{'round':>5} {'clients':>7} {'accuracy':>8} {'version':>7} {'promoted':>8} "
          f"{'serving':>7} {'requests':>8} {'failed':>6}")  # fmt: skip
    try:
        publisher = Publisher(
            args.repository, MODEL, server=url, admin_token=token,
            canary_percent=args.canary_percent,
        )  # fmt: skip
        with Load(url, x[test]) as load:
            last = [load.counts()]

            def on_round(record, candidate) -> None:
                answered, failed = load.counts()
                accuracy = (
                    model.evaluate(candidate, x[test], y[test])["accuracy"]
                    if candidate
                    else float("nan")
                )
                row = {
                    "round": record.round, "clients": record.clients,
                    "accuracy": round(accuracy, 4), "version": record.version,
                    "promoted": record.promoted, "serving": record.serving,
                    "requests": answered - last[0][0], "failed": failed - last[0][1],
                    "reason": record.reason,
                }  # fmt: skip
                last[0] = (answered, failed)
                rows_out.append(row)
                print(f"{row['round']:>5} {row['clients']:>7} {accuracy:>8.4f} {row['version']:>7} "
                      f"{'yes' if record.promoted else 'no':>8} {row['serving']:>7} "
                      f"{row['requests']:>8} {row['failed']:>6}", flush=True)  # fmt: skip

            kind = FedProx if args.strategy == "fedprox" else FedAvg
            extra = {"proximal_mu": 0.1} if args.strategy == "fedprox" else {}
            inner_strategy = kind(
                min_train_nodes=clients,
                min_evaluate_nodes=clients,
                min_available_nodes=clients,
                **extra,
            )
            strategy = ServingStrategy(
                inner_strategy, publisher, model, sample=x[test], metric="loss",
                higher_is_better=False, tolerance=args.tolerance,
                on_round=on_round,
            )  # fmt: skip
            server = ServerApp()

            @server.main()
            def run(grid: Grid, context: Context) -> None:
                strategy.start(
                    grid=grid, initial_arrays=strategy.serving_arrays, num_rounds=args.rounds
                )

            logging.getLogger("flwr").setLevel(logging.WARNING)
            run_simulation(
                server_app=server, client_app=app, num_supernodes=clients,
                backend_config={"client_resources": {"num_cpus": 1},
                                "init_args": {"num_cpus": clients, "include_dashboard": False,
                                              "logging_level": logging.ERROR}},
            )  # fmt: skip
    finally:
        process.terminate()
        process.wait(30)
    for error in load.errors[:5]:
        print("failed request:", error, file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"rounds": rows_out}, indent=2) + "\n")
    if len(rows_out) != args.rounds:
        raise SystemExit(f"expected {args.rounds} rounds, got {len(rows_out)} (see Flower's log)")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
