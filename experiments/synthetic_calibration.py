"""Appendix K / Figure 2b of "Sparse Logit Sampling": calibration of students on a synthetic task.

1024-class Gaussian classification in 128 dimensions: class means ``~ N(0, I)``, inputs
``x = mean[y] + σ·ε`` with isotropic noise ``ε ~ N(0, I)`` (σ chosen so that the Bayes classifier
is right about 85 % of the time and the scaled-down teacher 60–80 %). As in the paper's pseudo-code,
the models are 3-layer GELU MLPs (teacher hidden 128, student hidden 96) trained with AdamW, and
the teacher learns with cross-entropy on fresh samples every step.

Students, all from the same initial weights and on the same batches in the same order:

* ``ce``: cross-entropy on the labels;
* ``full_kd``: KL to the teacher's dense softmax (computed online, as if the dense logits were cached);
* ``topk``: top-7 targets, renormalised to sum to 1, as top-k KD does;
* ``rs_multinomial`` / ``rs_systematic``: random sampling with 50 rounds.

The students see a fixed training set cut into "sequences" of 256 examples (seq id = chunk
index, input ids = the examples' labels). Every cached target takes the real path: the teacher's
logits ``[B, 256, 1024]`` go through ``CacheWriter`` into a real ``logitcache serve`` process (one
shard per method) and come back through ``SparseKDLoader``; each student step uses the loader
batch's ``target_ids`` / ``target_probs`` with ``logitcache.kd.sparse_kd_loss``. The loader's
``labels`` are shifted for language models, so ``input_ids`` serve as labels here, and every batch's
ids are checked against the training set (alignment). CE and full KD iterate over the same loader
batches (targets unused), so all students see identical data.

Evaluation on a fresh test set: accuracy, NLL, mean confidence and ECE (15 bins, right-closed, via
``logitcache.kd.metrics.CalibrationAccumulator``) per model, and a reliability diagram.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from common import cache_server, parser, save_figure, save_json
from torch import Tensor, nn

from logitcache.core.config import SamplerConfig
from logitcache.kd import sparse_kd_loss
from logitcache.kd.metrics import CalibrationAccumulator, expected_calibration_error
from logitcache.training import SparseKDBatch, SparseKDLoader
from logitcache.writer import CacheWriter

NAME = "synthetic_calibration"
NUM_CLASSES = 1024
DIM = 128
HIDDEN_TEACHER = 128
HIDDEN_STUDENT = 96
SIGMA = 2.5  # isotropic noise: Bayes (nearest mean) accuracy about 85 %
N_BINS = 15
CACHED = {  # method -> (shard, sampler)
    "topk": (0, SamplerConfig(method="topk", k=7)),
    "rs_multinomial": (1, SamplerConfig(method="multinomial", rounds=50)),
    "rs_systematic": (2, SamplerConfig(method="systematic", rounds=50)),
}
METHODS = ("ce", "full_kd", "topk", "rs_multinomial", "rs_systematic")


@dataclass(frozen=True)
class Scale:
    chunk: int  # examples per cached "sequence"
    train_chunks: int  # fixed training set: train_chunks × chunk examples
    batch_chunks: int  # sequences per student step: batch = batch_chunks × chunk
    teacher_steps: int
    teacher_batch: int
    student_steps: int
    test_size: int
    lr: float


FULL = Scale(
    chunk=256,
    train_chunks=1024,
    batch_chunks=1,
    teacher_steps=3000,
    teacher_batch=512,
    student_steps=4000,
    test_size=32768,
    lr=2e-3,
)
SMOKE = Scale(
    chunk=128,
    train_chunks=16,
    batch_chunks=2,
    teacher_steps=100,
    teacher_batch=256,
    student_steps=40,
    test_size=2048,
    lr=3e-3,
)


class ToyModel(nn.Module):
    """The paper's 3-layer GELU MLP."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(DIM, hidden)
        self.layer2 = nn.Linear(hidden, hidden)
        self.layer3 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = F.gelu(self.layer1(x))
        x = F.gelu(self.layer2(x))
        out: Tensor = self.layer3(x)
        return out


class Task:
    """Class means and the sampler of ``(x [n, DIM], y [n])`` pairs."""

    def __init__(self, seed: int, sigma: float) -> None:
        self.means = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(seed))
        self.sigma = sigma

    def draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        y = torch.randint(NUM_CLASSES, (n,), generator=gen)
        return self.means[y] + self.sigma * torch.randn(n, DIM, generator=gen), y

    def bayes_predict(self, x: Tensor) -> Tensor:
        """Equal isotropic covariances and uniform priors: the nearest mean."""
        return torch.cdist(x, self.means).argmin(dim=1)


def train_teacher(task: Task, scale: Scale, seed: int) -> ToyModel:
    torch.manual_seed(seed)
    teacher = ToyModel(HIDDEN_TEACHER)
    opt = torch.optim.AdamW(teacher.parameters(), lr=scale.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(scale.teacher_steps):
        x, y = task.draw(scale.teacher_batch, gen)
        loss = F.cross_entropy(teacher(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    teacher.eval()
    return teacher


def fill_cache(
    client: Any, teacher: ToyModel, x_train: Tensor, y_train: Tensor, seed: int
) -> dict[str, dict[str, float]]:
    """Teacher logits of every chunk through one CacheWriter per cached method; returns writer figures."""
    n_chunks, chunk, _ = x_train.shape
    stats: dict[str, dict[str, float]] = {}
    with ExitStack() as stack:
        writers = {
            name: stack.enter_context(
                CacheWriter(
                    client,
                    shard=shard,
                    sampler=sampler,
                    seq_len=chunk,
                    teacher=f"toy-mlp-h{HIDDEN_TEACHER}",
                    seed=seed + 100,
                )
            )
            for name, (shard, sampler) in CACHED.items()
        }
        step = 64
        for start in range(0, n_chunks, step):
            end = min(n_chunks, start + step)
            with torch.no_grad():
                logits = teacher(x_train[start:end].reshape(-1, DIM)).reshape(end - start, chunk, NUM_CLASSES)
            for writer in writers.values():
                writer.write(list(range(start, end)), y_train[start:end], logits)
        for name, writer in writers.items():
            writer.flush()
            client.seal_shard(writer.shard)
            s = writer.stats()
            stats[name] = {
                "records": s.records_written,
                "positions": s.positions_acked,
                "bytes_per_position": round(s.bytes_per_position, 3),
            }
    return stats


def batches_in_lockstep(loaders: dict[str, SparseKDLoader], steps: int) -> Iterator[dict[str, SparseKDBatch]]:
    """``steps`` steps of batches, one from each loader; all loaders visit the same seqs in the same order."""
    done, epoch = 0, 0
    while done < steps:
        iterators = []
        for loader in loaders.values():
            loader.set_epoch(epoch)
            iterators.append(iter(loader))
        try:
            for group in zip(*iterators, strict=True):
                batches = dict(zip(loaders, group, strict=True))
                first = group[0]
                for b in group[1:]:
                    assert torch.equal(b.seqs, first.seqs), "the loaders disagree on the batch order"
                yield batches
                done += 1
                if done == steps:
                    break
        finally:
            for it in iterators:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
        epoch += 1


def student_loss(
    method: str, logits: Tensor, labels: Tensor, batch: SparseKDBatch | None, teacher_probs: Tensor
) -> Tensor:
    if method == "ce":
        return F.cross_entropy(logits, labels)
    if method == "full_kd":
        ids = torch.arange(NUM_CLASSES).expand(logits.shape[0], NUM_CLASSES)
        return sparse_kd_loss(logits, ids, teacher_probs)
    assert batch is not None
    k = batch.target_ids.shape[-1]
    ids = batch.target_ids.reshape(-1, k)
    probs = batch.target_probs.reshape(-1, k)
    if method == "topk":  # top-k KD renormalises the kept mass to 1
        probs = probs / probs.sum(dim=1, keepdim=True)
    return sparse_kd_loss(logits, ids, probs)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, teacher_pred: Tensor | None) -> dict[str, Any]:
    model.eval()
    acc = CalibrationAccumulator(N_BINS)
    correct = nll = confidence = agree = 0.0
    parts: list[Tensor] = []
    for start in range(0, x.shape[0], 4096):
        logits = model(x[start : start + 4096])
        parts.append(logits)
        labels = y[start : start + 4096]
        acc.update(logits, labels)
        probs = logits.softmax(dim=1)
        conf, pred = probs.max(dim=1)
        correct += float((pred == labels).sum())
        confidence += float(conf.sum())
        nll += float(F.cross_entropy(logits, labels, reduction="sum"))
        if teacher_pred is not None:
            agree += float((pred == teacher_pred[start : start + 4096]).sum())
    model.train()
    n = x.shape[0]
    bins = acc.bins()
    # the streaming accumulator and the one-call helper agree
    whole = expected_calibration_error(torch.cat(parts), y, N_BINS)
    assert abs(whole - bins.ece) < 1e-6, (whole, bins.ece)
    top7 = torch.cat(parts).softmax(dim=1).topk(7, dim=1).values.sum(dim=1)
    out: dict[str, Any] = {
        "accuracy": correct / n,
        "ece": bins.ece,
        "nll": nll / n,
        "mean_confidence": confidence / n,
        "overconfidence": confidence / n - correct / n,
        "mass_beyond_top7": float((1 - top7).mean()),
        "bins": {
            "count": [int(c) for c in bins.count],
            "confidence": [float(c) for c in bins.confidence],
            "accuracy": [float(a) for a in bins.accuracy],
        },
    }
    if teacher_pred is not None:
        out["teacher_agreement"] = agree / n
    return out


def reliability_figure(results: dict[str, dict[str, Any]], title: str) -> Any:
    figure, (ax, hist) = plt.subplots(1, 2, figsize=(13, 5))
    ax.plot([0, 1], [0, 1], color="gray", ls="--", lw=1, label="perfect calibration")
    colors = {
        "teacher": "black",
        "ce": "tab:purple",
        "full_kd": "tab:blue",
        "topk": "tab:red",
        "rs_multinomial": "salmon",
        "rs_systematic": "tab:green",
    }
    centers = [(i + 0.5) / N_BINS for i in range(N_BINS)]
    for name, r in results.items():
        b = r["bins"]
        keep = [i for i, c in enumerate(b["count"]) if c > 0]
        gap = 100 * r["overconfidence"]
        label = f"{name} (acc {100 * r['accuracy']:.1f} %, ECE {100 * r['ece']:.2f} %, conf − acc {gap:+.2f})"
        ax.plot(
            [b["confidence"][i] for i in keep],
            [b["accuracy"][i] for i in keep],
            marker="o",
            ms=3,
            color=colors[name],
            lw=2.0 if name == "teacher" else 1.5,
            label=label,
        )
        total = sum(b["count"])
        hist.plot(centers, [c / total for c in b["count"]], marker="o", ms=3, color=colors[name], label=name)
    ax.set_xlabel("confidence (mean max probability in the bin)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.4)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("reliability diagram (15 bins)")
    hist.set_xlabel("confidence bin")
    hist.set_ylabel("fraction of test examples")
    hist.grid(alpha=0.4)
    hist.legend(fontsize=8)
    hist.set_title("where the confidences fall")
    figure.suptitle(title)
    return figure


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the CPUs are shared)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    scale = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    seed = args.seed
    task = Task(seed, SIGMA)
    data_gen = torch.Generator().manual_seed(seed + 2)
    x_flat, y_flat = task.draw(scale.train_chunks * scale.chunk, data_gen)
    x_train = x_flat.reshape(scale.train_chunks, scale.chunk, DIM)
    y_train = y_flat.reshape(scale.train_chunks, scale.chunk)
    x_test, y_test = task.draw(scale.test_size, torch.Generator().manual_seed(seed + 3))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    teacher = train_teacher(task, scale, seed + 10)
    timings["teacher"] = time.perf_counter() - t0
    with torch.no_grad():
        teacher_pred = torch.cat([teacher(x_test[i : i + 4096]).argmax(1) for i in range(0, scale.test_size, 4096)])

    torch.manual_seed(seed + 20)
    init = ToyModel(HIDDEN_STUDENT).state_dict()
    students: dict[str, ToyModel] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for method in METHODS:
        model = ToyModel(HIDDEN_STUDENT)
        model.load_state_dict(init)
        students[method] = model
        optimizers[method] = torch.optim.AdamW(model.parameters(), lr=scale.lr, weight_decay=0.0)

    entries: dict[str, list[float]] = {name: [] for name in CACHED}
    with cache_server() as client:
        t0 = time.perf_counter()
        cache_stats = fill_cache(client, teacher, x_train, y_train, seed)
        timings["cache_fill"] = time.perf_counter() - t0
        loaders = {
            name: SparseKDLoader(client, [shard], batch_size=scale.batch_chunks, seed=seed, drop_last=True)
            for name, (shard, _) in CACHED.items()
        }
        t0 = time.perf_counter()
        for batches in batches_in_lockstep(loaders, scale.student_steps):
            seqs = next(iter(batches.values())).seqs
            x = x_train[seqs].reshape(-1, DIM)
            labels = next(iter(batches.values())).input_ids.reshape(-1)
            # alignment: the record's input ids are the labels of exactly these examples
            assert torch.equal(labels, y_train[seqs].reshape(-1)), "cached records are not aligned with the data"
            for name, b in batches.items():
                entries[name].append(float((b.target_ids >= 0).sum(dim=-1).double().mean()))
            with torch.no_grad():
                teacher_probs = teacher(x).softmax(dim=1)
            for method, model in students.items():
                loss = student_loss(method, model(x), labels, batches.get(method), teacher_probs)
                optimizers[method].zero_grad(set_to_none=True)
                loss.backward()
                optimizers[method].step()
        timings["students"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {"teacher": evaluate(teacher, x_test, y_test, None)}
    for method, model in students.items():
        results[method] = evaluate(model, x_test, y_test, teacher_pred)
    bayes = float((task.bayes_predict(x_test) == y_test).double().mean())
    timings["eval"] = time.perf_counter() - t0
    for name in CACHED:
        cache_stats[name]["entries_per_position"] = round(sum(entries[name]) / max(1, len(entries[name])), 3)

    batch = scale.batch_chunks * scale.chunk
    title = (
        f"{NUM_CLASSES}-class Gaussian task: students after {scale.student_steps} steps of batch {batch} "
        f"(paper: 20000 × 4096)"
    )
    figure = reliability_figure(results, title)
    save_figure(args.out, NAME, figure)
    plt.close(figure)

    elapsed = time.perf_counter() - started
    epochs = scale.student_steps * batch / (scale.train_chunks * scale.chunk)
    result: dict[str, Any] = {
        "experiment": NAME,
        "smoke": args.smoke,
        "seed": seed,
        "steps": scale.student_steps,
        "batch": batch,
        "note": (
            f"scaled down from the paper's 20000 steps of batch 4096 to fit the 2-core CPU: the teacher "
            f"takes {scale.teacher_steps} steps of {scale.teacher_batch} fresh samples, the students "
            f"{scale.student_steps} steps of {batch} over a fixed cached set of {scale.train_chunks} × "
            f"{scale.chunk} examples ({epochs:.1f} epochs); float32, not float64; lr {scale.lr} for all"
        ),
        "config": {
            **asdict(scale),
            "num_classes": NUM_CLASSES,
            "dim": DIM,
            "hidden_teacher": HIDDEN_TEACHER,
            "hidden_student": HIDDEN_STUDENT,
            "sigma": SIGMA,
            "n_bins": N_BINS,
            "top_k": 7,
            "rounds": 50,
            "threads": args.threads,
            "epochs": round(epochs, 3),
        },
        "bayes_accuracy": bayes,
        "chance_accuracy": 1 / NUM_CLASSES,
        "methods": results,
        "cache": cache_stats,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "seconds": round(elapsed, 2),
    }
    assert all(math.isfinite(r["ece"]) for r in results.values())
    save_json(args.out, NAME, result)
    summary = {
        "experiment": NAME,
        "smoke": args.smoke,
        "steps": scale.student_steps,
        "batch": batch,
        "seconds": round(elapsed, 2),
        "bayes_acc": round(bayes, 4),
        **{
            name: {"acc": round(r["accuracy"], 4), "ece": round(r["ece"], 4), "conf": round(r["mean_confidence"], 4)}
            for name, r in results.items()
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
