"""One board's local training round in the images: arm64 under QEMU vs amd64 natively.

Not a test: it prints a table and one final JSON line. The baseline is the amd64 image on
this machine, measured in the same run; the figure users should expect from emulation is the
ratio arm64 (QEMU user mode) / amd64 (native).

    python benchmarks/bench_qemu_round.py --data ../shared/data [--repeats 3]

What a board does for one "train" message, timed inside each image, in a fresh process each
time (the SuperNode starts a ClientApp process per message): start Python, import the
ClientApp (flwr, numpy), read one real Walch subject's windows, and take the server's default
number of local gradient steps (sleepfed.model.objective) from the initial model.

Needs the images of docker/build-local.sh (sleepfed-agent:amd64 and :arm64) and its engine:
the benchmark starts that engine with ``build-local.sh --no-build --keep-daemon`` if it is not
running and says so when an image is missing (it never builds them: ~10 min).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import record

REPO = Path(__file__).resolve().parents[1]
SOCK = "/run/sleepfed-docker.sock"
DOCKER = "/usr/bin/docker"
SUBJECT = "4426783"
ARCHES = {"amd64": "linux/amd64", "arm64": "linux/arm64"}

# Runs inside the image: prints one JSON line with the phases' seconds.
ROUND = """
import json, time, sys
t0 = time.perf_counter()
import sleepfed.board.training.client_app  # noqa: F401  (what the ClientApp process imports)
from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset
t1 = time.perf_counter()
night = walch_dataset("/data/walch2019", [sys.argv[1]])[sys.argv[1]]
x, y = night.features[night.labelled], night.labels[night.labelled]
t2 = time.perf_counter()
arrays = model.train(model.initial_arrays(), x, y, steps=int(sys.argv[2]))
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "train": t3 - t2, "windows": len(y),
                  "machine": __import__("platform").machine()}))
"""


def docker(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{SOCK}"}
    return subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def engine_up() -> bool:
    if docker("version").returncode == 0:
        return True
    started = subprocess.run(
        [str(REPO / "docker" / "build-local.sh"), "--no-build", "--keep-daemon",
         "--arch", "amd64,arm64"],
        capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    return started.returncode == 0 and docker("version").returncode == 0


def one_round(arch: str, data: Path, iterations: int) -> dict[str, float]:
    started = time.perf_counter()
    result = docker(
        "run", "--rm", "--network", "none", "--platform", ARCHES[arch],
        "-v", f"{data / 'walch2019'}:/data/walch2019:ro", "--entrypoint", "python",
        f"sleepfed-agent:{arch}", "-c", ROUND, SUBJECT, str(iterations),
    )  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{arch}: the round failed:\n{result.stderr[-2000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["container"] = wall
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared data folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20, help="local gradient steps")
    args = parser.parse_args()
    if os.geteuid() != 0 or not engine_up():
        print("bench_qemu_round: needs root and docker/build-local.sh's engine; skipped")
        return
    missing = [a for a in ARCHES if docker("image", "inspect", f"sleepfed-agent:{a}").returncode]
    if missing:
        print(f"bench_qemu_round: no image sleepfed-agent:{','.join(missing)}; run "
              "docker/build-local.sh first; skipped")  # fmt: skip
        return
    load = os.getloadavg()[0]
    results: dict[str, dict[str, float]] = {}
    for arch in ARCHES:
        runs = [one_round(arch, args.data.resolve(), args.iterations) for _ in range(args.repeats)]
        assert all(r["machine"] == ("aarch64" if arch == "arm64" else "x86_64") for r in runs)
        results[arch] = {
            key: statistics.median(float(r[key]) for r in runs)
            for key in ("import", "load", "train", "container")
        }
        results[arch]["windows"] = float(runs[0]["windows"])
    print(f"one local training round, subject {SUBJECT}, {args.iterations} gradient steps, "
          f"median of {args.repeats} (load average {load:.1f} at start)")  # fmt: skip
    print(f"{'phase':<28}{'amd64 native s':>16}{'arm64 QEMU s':>16}{'ratio':>8}")
    names = {"import": "start + import ClientApp", "load": "read the night's windows",
             "train": "train (gradient steps)", "container": "whole container run"}  # fmt: skip
    ratios = {}
    for key, name in names.items():
        native, emulated = results["amd64"][key], results["arm64"][key]
        ratios[key] = emulated / native if native > 0 else float("nan")
        print(f"{name:<28}{native:>16.2f}{emulated:>16.2f}{ratios[key]:>8.1f}")
    figures = {"bench": "qemu_round", "subject": SUBJECT, "results": results,
               "ratio_arm64_over_amd64": ratios, "loadavg": load,
               "repeats": args.repeats, "iterations": args.iterations}  # fmt: skip
    print(json.dumps(figures))
    record.save(figures)


if __name__ == "__main__":
    sys.exit(main())
