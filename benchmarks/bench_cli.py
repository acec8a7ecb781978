"""Benchmark: how long ``logitcache COMMAND --help`` takes, against a bare interpreter start.

Each round runs, interleaved, a bare ``python -c pass`` (the baseline: what no command can
avoid), ``python -m logitcache --help`` and ``python -m logitcache teacher --help`` and
``python -m logitcache shards ls --help``, each in a fresh process. The figures are medians over
the rounds, wall seconds and CPU seconds (user + system of the child), and the ratio of each to
the baseline; ``import_torch_s`` is what one ``import torch`` costs here, the price a help that
imported it would pay.

Run: ``python benchmarks/bench_cli.py [--rounds 7]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "baseline": ["-c", "pass"],
    "help": ["-m", "logitcache", "--help"],
    "teacher_help": ["-m", "logitcache", "teacher", "--help"],
    "shards_help": ["-m", "logitcache", "shards", "ls", "--help"],
    "import_torch": ["-c", "import torch"],
}


def _run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one fresh interpreter running ``args``."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = os.times()
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpus: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for name in COMMANDS:  # warm the page cache once, untimed
        _run(COMMANDS[name])
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            seconds, cpu_seconds = _run(command)
            walls[name].append(seconds)
            cpus[name].append(cpu_seconds)
    wall = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    result: dict[str, float | int] = {}
    for name in ("help", "teacher_help", "shards_help"):
        result[f"{name}_s"] = round(wall[name], 3)
        result[f"{name}_cpu_s"] = round(cpu[name], 3)
        result[f"{name}_vs_baseline"] = round(wall[name] / wall["baseline"], 2)
    result["baseline_s"] = round(wall["baseline"], 3)
    result["import_torch_s"] = round(wall["import_torch"], 3)
    result["rounds"] = args.rounds
    for name, seconds in wall.items():
        print(f"{name:>14}: {seconds:.3f} s wall, {cpu[name]:.3f} s CPU")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
