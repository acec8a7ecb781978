"""Distil a Hugging Face student from the cache with ``SparseKDTrainer``: the few lines that change.

::

    python examples/distil_hf.py --config examples/distil_hf.yaml            # a YAML file of the flags below
    python examples/distil_hf.py --server 127.0.0.1:50051 --shards 0 1 --student ./student --max-steps 1000
    torchrun --nproc-per-node 8 examples/distil_hf.py --config run.yaml      # DDP: each rank its own batches
    python examples/distil_hf.py --config run.yaml --resume                  # from the last checkpoint

A YAML key is a flag's name with ``_`` for ``-`` (``max_steps: 1000``); a flag given on the command
line wins over the file. The student is any local causal LM directory with the teacher's tokenizer
(its vocabulary may be padded larger). Prints one JSON line: steps, the last logged loss, where the
model was saved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from logitcache.client import CacheClient
from logitcache.integrations.transformers import SparseKDTrainer
from logitcache.kd import KDParams
from logitcache.training import SparseKDLoader


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a YAML file of these flags' values")
    parser.add_argument("--server", nargs="+", default=["127.0.0.1:50051"], help="cache servers host:port")
    parser.add_argument("--shards", type=int, nargs="+", default=[0], help="shard ids to train on")
    parser.add_argument("--student", type=Path, help="the student model directory (required)")
    parser.add_argument("--output-dir", type=Path, default=Path("distil-out"), help="checkpoints and the final model")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step on each rank")
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--ce-weight", type=float, default=0.0, help="α of α·CE + (1 − α)·KD")
    parser.add_argument("--fused-linear", action="store_true", help="never build the [B, T, V] logits (1 process)")
    parser.add_argument("--save-steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="the loader's shuffling seed")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, with a ``--config`` file's values as their defaults."""
    parser = _parser()
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        import yaml

        values: dict[str, Any] = yaml.safe_load(first.config.read_text()) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{first.config}: unknown keys {unknown}")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if args.student is None:
        parser.error("--student (or student: in --config) is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    gloo = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _cuda()  # torchrun on CPUs
    training = TrainingArguments(
        str(args.output_dir), max_steps=args.max_steps, learning_rate=args.learning_rate, save_steps=args.save_steps,
        logging_steps=10, report_to=[], use_cpu=not _cuda(), ddp_backend="gloo" if gloo else None,
    )  # fmt: skip
    _ = training.device  # sets up torch.distributed under torchrun: the loader then reads its rank from it
    # drop_last: under DDP every rank takes the same number of steps
    loader = SparseKDLoader(CacheClient(args.server), args.shards, batch_size=args.batch_size, seed=args.seed,
                            drop_last=True)  # fmt: skip
    trainer = SparseKDTrainer(
        AutoModelForCausalLM.from_pretrained(args.student),
        training,
        loader,
        kd_params=KDParams(ce_weight=args.ce_weight),
        fused_linear=args.fused_linear,
        tokenizer=AutoTokenizer.from_pretrained(args.student),
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    trainer.save_model(str(args.output_dir / "final"))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    if trainer.is_world_process_zero():
        summary = {"steps": trainer.state.global_step, "loss": losses[-1] if losses else None,
                   "model": str(args.output_dir / "final")}  # fmt: skip
        print(json.dumps(summary))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
