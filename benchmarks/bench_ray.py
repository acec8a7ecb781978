"""Benchmark: teacher inference on Ray Data against ``logitcache teacher``, the same model, corpus and sampler.

A random-weight Llama (``--hidden``, ``--layers``, vocabulary ``--vocab``; no tokenizer) is saved once
with a random ``.bin`` corpus of ``--sequences`` sequences of ``--seq-len`` tokens. Each round runs,
interleaved (the order alternates between rounds), each into a fresh ``logitcache serve`` process:

* ``cli``: ``python -m logitcache teacher`` (one process, torch's default threads: one per core);
* ``ray``: :func:`logitcache.integrations.ray.run_teacher` on a local Ray instance started once
  (``num_cpus`` = ``--actors``), with ``--actors`` teacher actors of one CPU each (one per core by
  default), ``world_size=1`` as the CLI.

Throughput is positions per second as each reports it: the CLI's own figure (from its first check to
its seal, model load excluded) and the Ray run's (from its first batch's start to its last one's end,
actor start-up and model loads excluded); ``ratio_ray_vs_cli`` is their ratio (the goal is >= 0.9 at
one actor per core). The end-to-end figures count every second the caller waits (the CLI process's
imports and model load; the actors' start-up, imports and model loads). CPU seconds: ``*_cpu_s`` are
the whole machine's over each run (``/proc/stat``: the server, Ray's own processes, start-up included;
meaningful on an otherwise idle machine; null without ``/proc``), ``cli_process_cpu_s`` the CLI
process's own, ``ray_actor_cpu_s`` the actors' inside their batches. Each figure is the best of the
rounds (the highest rate, the least time): the one least disturbed by whatever else the machine runs.

Run: ``python benchmarks/bench_ray.py [--rounds 2] [--actors N]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine since boot (user, nice, system, irq, softirq, steal); None: no /proc."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7) if i < len(fields)) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's reaped children (the CLI process)."""
    times = os.times()
    return times.children_user + times.children_system


def _save_model(directory: Path, *, vocab: int, hidden: int, layers: int, seq_len: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=seq_len,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def _cli(args: argparse.Namespace, model: Path, data: Path, address: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "logitcache", "teacher", "--model", str(model), "--data", str(data)]
    command += ["--seq-len", str(args.seq_len), "--server", address, "--batch-size", str(args.batch_size)]
    command += ["--rounds", str(args.sampler_rounds), "--no-progress"]
    cpu, own, started = _machine_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall, cpu_after, own_after = time.perf_counter() - started, _machine_cpu_seconds(), _children_cpu_seconds()
    if done.returncode != 0:
        raise RuntimeError(f"logitcache teacher failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "positions": summary["positions"],
        "positions_per_s": summary["positions_per_s"],
        "end_to_end_positions_per_s": summary["positions"] / wall,
        "wall_s": wall,
        "cpu_s": None if cpu is None or cpu_after is None else cpu_after - cpu,
        "process_cpu_s": own_after - own,
    }


def _ray(args: argparse.Namespace, model: Path, data: Path, address: str) -> dict[str, Any]:
    from logitcache.core.config import SamplerConfig
    from logitcache.integrations.ray import run_teacher

    cpu, started = _machine_cpu_seconds(), time.perf_counter()
    summary = run_teacher(
        data,
        model=model,
        server=address,
        seq_len=args.seq_len,
        actors=args.actors,
        batch_size=args.batch_size,
        sampler=SamplerConfig(rounds=args.sampler_rounds),
    )
    wall, cpu_after = time.perf_counter() - started, _machine_cpu_seconds()
    return {
        "positions": summary.positions,
        "positions_per_s": summary.positions_per_s,
        "end_to_end_positions_per_s": summary.positions / wall,
        "wall_s": wall,
        "cpu_s": None if cpu is None or cpu_after is None else cpu_after - cpu,
        "actor_cpu_s": summary.actor_cpu_seconds,
    }


def _best(runs: list[dict[str, Any]], key: str) -> float | None:
    """The highest rate (``*_per_s``) or the least time of the rounds."""
    values = [float(run[key]) for run in runs if run.get(key) is not None]
    if not values:
        return None
    return round(max(values) if key.endswith("_per_s") else min(values), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each runs both)")
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1, help="Ray teacher actors (1 CPU each)")
    parser.add_argument("--sequences", type=int, default=768)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sampler-rounds", type=int, default=50, help="N draws per position")
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    from logitcache.testing import ServerProcess

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        root = Path(tmp)
        model = _save_model(
            root / "teacher", vocab=args.vocab, hidden=args.hidden, layers=args.layers, seq_len=args.seq_len
        )
        data = root / "corpus.bin"
        tokens = np.random.default_rng(0).integers(0, args.vocab, args.sequences * args.seq_len, dtype=np.uint16)
        tokens.tofile(data)
        ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        runs: dict[str, list[dict[str, Any]]] = {"cli": [], "ray": []}
        try:
            for round_ in range(args.rounds):
                for name in ("cli", "ray") if round_ % 2 == 0 else ("ray", "cli"):
                    server = ServerProcess(root / f"{name}-{round_}", http=False)
                    try:
                        run = (_cli if name == "cli" else _ray)(args, model, data, server.address)
                    finally:
                        server.stop()
                    runs[name].append(run)
                    print(
                        f"round {round_} {name:>3}: {run['positions_per_s']:>10,.0f} positions/s "
                        f"({run['end_to_end_positions_per_s']:,.0f} end to end, {run['wall_s']:.1f} s wall, "
                        f"{run['cpu_s'] or float('nan'):.1f} machine CPU s)",
                        flush=True,
                    )
        finally:
            ray.shutdown()
    cli_rate, ray_rate = _best(runs["cli"], "positions_per_s"), _best(runs["ray"], "positions_per_s")
    cli_e2e = _best(runs["cli"], "end_to_end_positions_per_s")
    ray_e2e = _best(runs["ray"], "end_to_end_positions_per_s")
    result = {
        "ratio_ray_vs_cli": round(ray_rate / cli_rate, 3) if ray_rate and cli_rate else None,
        "ray_positions_per_s": ray_rate,
        "cli_positions_per_s": cli_rate,
        "ratio_end_to_end": round(ray_e2e / cli_e2e, 3) if ray_e2e and cli_e2e else None,
        "ray_end_to_end_positions_per_s": ray_e2e,
        "cli_end_to_end_positions_per_s": cli_e2e,
        "ray_wall_s": _best(runs["ray"], "wall_s"),
        "cli_wall_s": _best(runs["cli"], "wall_s"),
        "ray_cpu_s": _best(runs["ray"], "cpu_s"),
        "cli_cpu_s": _best(runs["cli"], "cpu_s"),
        "cli_process_cpu_s": _best(runs["cli"], "process_cpu_s"),
        "ray_actor_cpu_s": _best(runs["ray"], "actor_cpu_s"),
        "actors": args.actors,
        "cores": os.cpu_count(),
        "positions": runs["cli"][0]["positions"],
        "model": {"vocab": args.vocab, "hidden": args.hidden, "layers": args.layers},
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
