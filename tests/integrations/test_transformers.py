"""SparseKDTrainer: a real Trainer over a real server process, a tiny HF student and teacher saved to disk."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, TrainingArguments

from logitcache.apps.cli import main as cli
from logitcache.client import CacheClient
from logitcache.integrations.transformers import SparseKDTrainer
from logitcache.kd import KDParams
from logitcache.testing import ServerProcess
from logitcache.training import SparseKDBatch, SparseKDLoader
from tests.writer.tiny_models import TEXT, save_tiny_llama

SEQ_LEN = 16
BATCH = 4


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """Shard 0: the tiny teacher's sampled targets over TEXT × 4, cut into 16-token seqs (sealed)."""
    root = tmp_path_factory.mktemp("trainer")
    teacher = save_tiny_llama(root / "teacher", seed=1)
    student = save_tiny_llama(root / "student", seed=2)  # the same tokenizer, other weights
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    ids = np.array(tokenizer(TEXT * 4, add_special_tokens=False)["input_ids"], dtype=np.int64)
    np.save(root / "corpus.npy", ids)
    server = ServerProcess(root / "data", http=False)
    try:
        args = ["teacher", "--model", str(teacher), "--data", str(root / "corpus.npy"), "--seq-len", str(SEQ_LEN)]
        args += ["--server", server.address, "--rounds", "30", "--no-progress"]
        assert cli(args) == 0
        yield server, student
    finally:
        server.stop()


class _Recording(SparseKDTrainer):
    """Records the (epoch, seqs) of every batch it trains on."""

    seen: list[tuple[int, list[int]]]

    def compute_loss(
        self, model: Any, inputs: Any, return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        assert isinstance(inputs, SparseKDBatch)
        self.seen.append((inputs.epoch, inputs.seqs.tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def _trainer(
    server: ServerProcess,
    student: Path,
    out: Path,
    *,
    max_steps: int,
    accumulation: int = 1,
    learning_rate: float = 3e-3,
    **kwargs: Any,
) -> _Recording:
    loader = SparseKDLoader(CacheClient([server.address]), [0], batch_size=BATCH, seed=5, rank=0, world_size=1)
    args = TrainingArguments(
        str(out), max_steps=max_steps, learning_rate=learning_rate, logging_steps=1, save_steps=6, report_to=[],
        use_cpu=True, gradient_accumulation_steps=accumulation, seed=0, disable_tqdm=True,
    )  # fmt: skip
    torch.manual_seed(0)
    trainer = _Recording(AutoModelForCausalLM.from_pretrained(student), args, loader, **kwargs)
    trainer.seen = []
    return trainer


def test_the_trainer_distils_and_its_loss_falls(cache: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, student = cache
    probe = _trainer(server, student, tmp_path / "probe", max_steps=1)
    steps = 2 * len(probe.loader)  # two epochs
    trainer = _trainer(
        server, student, tmp_path / "out", max_steps=steps, learning_rate=1e-2, kd_params=KDParams(ce_weight=0.5)
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == steps
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses  # 3.85 → 3.22 when written
    epochs = [epoch for epoch, _ in trainer.seen]
    assert epochs == [0] * (steps // 2) + [1] * (steps // 2)  # set_epoch was called
    assert trainer.seen[0][1] != trainer.seen[steps // 2][1]  # ... and the second epoch has its own order


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_resumed_run_trains_on_exactly_the_batches_of_an_uninterrupted_one(
    cache: tuple[ServerProcess, Path], tmp_path: Path, accumulation: int
) -> None:
    server, student = cache
    per_epoch = len(_trainer(server, student, tmp_path / "probe", max_steps=1).loader)
    steps = (per_epoch * 3 // 2) // accumulation  # past the end of the first epoch
    whole = _trainer(server, student, tmp_path / "whole", max_steps=steps, accumulation=accumulation)
    whole.train()
    first = _trainer(server, student, tmp_path / "split", max_steps=steps, accumulation=accumulation)
    first.add_callback(_StopAt(6))  # stops right after checkpoint-6 is written, mid-epoch
    first.train()
    assert (tmp_path / "split" / "checkpoint-6" / "logitcache_loader_rank0.json").is_file()
    second = _trainer(server, student, tmp_path / "split", max_steps=steps, accumulation=accumulation)
    second.train(resume_from_checkpoint=True)  # the last checkpoint: checkpoint-6
    assert len(first.seen) == 6 * accumulation
    assert first.seen + second.seen == whole.seen
    assert second.state.global_step == whole.state.global_step == steps


def test_the_fused_linear_loss_matches_the_logits_loss(cache: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, student = cache
    plain = _trainer(server, student, tmp_path / "plain", max_steps=1)
    fused = _trainer(server, student, tmp_path / "fused", max_steps=1, fused_linear=True)
    batch = next(iter(plain.loader))
    torch.testing.assert_close(
        fused.compute_loss(fused.model, batch), plain.compute_loss(plain.model, batch), rtol=1e-5, atol=1e-5
    )


def test_a_student_too_small_for_the_teachers_vocabulary_is_refused(
    cache: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    from logitcache.training import ShardSetError

    server, student = cache
    model = AutoModelForCausalLM.from_pretrained(student)
    model.resize_token_embeddings(model.config.vocab_size - 1)
    loader = SparseKDLoader(CacheClient([server.address]), [0], batch_size=BATCH, rank=0, world_size=1)
    with pytest.raises(ShardSetError, match="smaller than the teacher's"):
        SparseKDTrainer(model, TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]), loader)


_DDP_SCRIPT = """
import json, os, sys
import torch.distributed as dist
from transformers import AutoModelForCausalLM, TrainingArguments
from logitcache.client import CacheClient
from logitcache.integrations.transformers import SparseKDTrainer
from logitcache.training import SparseKDLoader

address, student, out = sys.argv[1:4]
args = TrainingArguments(out, max_steps=6, learning_rate=1e-3, use_cpu=True, ddp_backend="gloo", report_to=[],
                         save_strategy="no", disable_tqdm=True)
assert args.device.type == "cpu" and dist.is_initialized()  # args.device sets up the gloo group: the loader reads it
loader = SparseKDLoader(CacheClient([address]), [0], batch_size=2, seed=1, drop_last=True)
seen = []

class Recording(SparseKDTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        seen.extend(inputs.seqs.tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

trainer = Recording(AutoModelForCausalLM.from_pretrained(student), args, loader)
trainer.train()
with open(os.path.join(out, f"seen{loader.rank}.json"), "w") as f:
    report = {"rank": loader.rank, "world_size": loader.world_size, "seen": seen, "step": trainer.state.global_step}
    json.dump(report, f)
"""


def test_two_gloo_processes_partition_the_batches(cache: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, student = cache
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(_DDP_SCRIPT))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), server.address, str(student), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    reports = [json.loads((tmp_path / f"seen{rank}.json").read_text()) for rank in range(2)]
    assert [(r["rank"], r["world_size"], r["step"]) for r in reports] == [(0, 2, 6), (1, 2, 6)]
    seen = [set(r["seen"]) for r in reports]
    assert len(reports[0]["seen"]) == len(reports[1]["seen"]) == 12  # 6 steps of 2 seqs on each rank
    assert not seen[0] & seen[1]  # no seq on both ranks


def test_the_example_distils_from_a_yaml_config_and_resumes(cache: tuple[ServerProcess, Path], tmp_path: Path) -> None:
    server, student = cache
    config = tmp_path / "run.yaml"
    config.write_text(
        f"server: ['{server.address}']\nshards: [0]\nstudent: {student}\noutput_dir: {tmp_path / 'out'}\n"
        "batch_size: 4\nmax_steps: 4\nsave_steps: 2\nce_weight: 0.1\n"
    )
    example = Path(__file__).resolve().parents[2] / "examples" / "distil_hf.py"

    def run(*flags: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(example), "--config", str(config), *flags], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-4000:]
        summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return summary

    first = run()
    assert first["steps"] == 4
    assert (Path(first["model"]) / "config.json").is_file()
    assert run("--max-steps", "6", "--resume")["steps"] == 6  # the flag wins over the file; resumed at step 4
