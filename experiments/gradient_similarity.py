"""How close is a sparse-KD gradient to the full-KD gradient? (the paper's Table 3, on a real teacher)

The teacher is SmolLM2-135M-Instruct (``lm_corpus``: GGUF, V = 49152), used as it is; the student
is a small Llama with the teacher's tokenizer, trained briefly with cross-entropy on the Python
documentation corpus. Then, for the same student and the same positions, the gradient of the KD
loss with respect to *all the student's parameters* is taken with each kind of teacher target:

* full KD (the reference): dense forward KL ``KL(p_teacher || p_student)``;
* top-k 12 / 50 / 300: the k most probable teacher tokens, renormalised to sum to 1 (the targets
  as a top-k cache would hand them to the loss);
* random sampling (RS) with about 12 unique tokens per position: ``N`` draws from the teacher,
  ``N`` tuned on this teacher so that the mean number of unique tokens is ≈ 12, multinomial and
  systematic.

The sparse losses go through ``logitcache.targets.sampling`` and ``logitcache.kd.sparse_kd_loss``
(``reduction="sum"`` then divided by the number of positions), exactly as training would use them.
Reported: the angle between each sparse gradient and the full-KD one, and the norm ratio
``‖g_sparse‖ / ‖g_full‖``, as a function of how many positions the gradient averages over.

Why a function of positions: RS targets are unbiased (``E[target] = p_teacher``), and the loss
gradient is linear in the target, so the RS gradient is the full-KD gradient plus zero-mean noise
that averages out over positions; its angle should shrink roughly as ``1/sqrt(positions)``. Top-k
targets are biased (the tail is cut and the head inflated), and a bias does not average out: its
angle levels off at a floor. The paper measured at ~1M tokens.

Gradients are accumulated chunk by chunk (one student forward per chunk, one backward per method
from the logits' gradient), so large sizes fit in memory. Each seed streams ``max(sizes)`` fresh
positions; for a size ``P`` the stream is cut into consecutive blocks of ``P`` positions and every
block's gradient is one sample, so the small sizes are averaged over many blocks and every size
over the seeds.

    python experiments/gradient_similarity.py [--smoke] [--out DIR] [--seed N]
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import parser, save_figure, save_json
from lm_corpus import RSMethod, build_corpus, make_llama, random_windows, teacher_for, tune_rounds
from torch import Tensor

from logitcache.kd import KDParams, sparse_kd_loss
from logitcache.targets.sampling import sample_random, sample_topk

NAME = "gradient_similarity"

# The paper's Table 3 (gradient w.r.t. the student's parameters vs full KD, ~1M tokens).
PAPER_TABLE3 = {
    "topk_12": {"angle_deg": 58.0, "norm_ratio": 2.4},
    "topk_50": {"angle_deg": 48.0, "norm_ratio": 1.8},
    "topk_300": {"angle_deg": 30.0, "norm_ratio": 1.3},
    "rs_12": {"angle_deg": 4.0, "norm_ratio": 1.0},
}


@dataclass(frozen=True)
class StudentShape:
    hidden: int
    layers: int
    heads: int
    steps: int  # AdamW steps of cross-entropy training
    batch: int  # sequences per step
    lr: float  # peak learning rate (linear warm-up, cosine decay)


@dataclass(frozen=True)
class Config:
    max_bytes: int | None  # corpus size cap (None: all of it)
    seq_len: int
    student: StudentShape
    sizes: tuple[int, ...]  # positions per gradient, ascending, each a multiple of chunk
    chunk: int  # positions per student forward (a multiple of seq_len)
    seeds: int  # independent position streams (and sampling draws)
    topk: tuple[int, ...]  # top-k baselines
    target_unique: float  # mean unique tokens per position the RS rounds are tuned to
    calib_positions: int  # teacher positions the rounds are tuned on (not used for the gradients)


FULL = Config(
    max_bytes=None,
    seq_len=128,
    student=StudentShape(hidden=128, layers=2, heads=4, steps=150, batch=16, lr=3e-3),
    sizes=(1024, 4096, 16384, 65536, 262144),
    chunk=1024,
    seeds=1,  # one stream of 262144 positions: 256 blocks of 1k, ..., one of 256k
    topk=(12, 50, 300),
    target_unique=12.0,
    calib_positions=4096,
)

SMOKE = Config(
    max_bytes=300_000,
    seq_len=64,
    student=StudentShape(hidden=16, layers=1, heads=2, steps=20, batch=8, lr=1e-2),
    sizes=(256, 1024, 2048),
    chunk=256,
    seeds=1,
    topk=(12, 50, 300),
    target_unique=12.0,
    calib_positions=1024,
)


def train_lm(model: Any, tokens: np.ndarray, shape: StudentShape, seq_len: int, rng: np.random.Generator) -> float:
    """Cross-entropy training on random windows; returns the mean loss of the last 10% of steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=shape.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, shape.steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, shape.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    losses: list[float] = []
    for _ in range(shape.steps):
        batch = random_windows(tokens, seq_len, shape.batch, rng)
        logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return float(np.mean(tail))


@torch.no_grad()
def val_loss(model: Any, tokens: np.ndarray, seq_len: int, rng: np.random.Generator, batches: int = 4) -> float:
    losses = []
    for _ in range(batches):
        batch = random_windows(tokens, seq_len, 16, rng)
        logits = model(batch[:, :-1]).logits
        losses.append(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))))
    return float(np.mean(losses))


def logit_grad(student_logits: Tensor, loss_fn: Any) -> Tensor:
    """``d loss / d logits`` for a loss of the (detached) student logits ``[P, V]``."""
    leaf = student_logits.detach().requires_grad_(True)
    loss = loss_fn(leaf)
    loss.backward()
    assert leaf.grad is not None
    return leaf.grad


def sparse_loss(ids: Tensor, probs: Tensor) -> Any:
    params = KDParams(reduction="sum")
    return lambda logits: sparse_kd_loss(logits, ids, probs, params=params)


def dense_kl(teacher_logits: Tensor) -> Any:
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return lambda logits: F.kl_div(F.log_softmax(logits, dim=-1), log_p, log_target=True, reduction="sum")


def run_seed(
    cfg: Config,
    teacher: Any,
    student: Any,
    tokens: np.ndarray,
    rounds: dict[RSMethod, int],
    seed: tuple[int, int],
) -> tuple[dict[str, list[list[float]]], dict[str, list[list[float]]], dict[str, float]]:
    """One stream of ``max(cfg.sizes)`` positions: per size, the angle (degrees) and norm ratio vs
    full KD of every block of that size (``[method][size index] -> one value per block``).

    Also returns the mean entries per position of each sparse method over the stream.
    """
    rng = np.random.default_rng(list(seed))
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    params = [p for p in student.parameters() if p.requires_grad]
    numel = sum(p.numel() for p in params)
    methods = ["full", *(f"topk_{k}" for k in cfg.topk), *(f"rs_{m}" for m in rounds)]
    # the running gradient sum of the current block of each size, per method
    blocks = {size: {m: torch.zeros(numel, dtype=torch.float64) for m in methods} for size in cfg.sizes}
    entries = dict.fromkeys(methods[1:], 0.0)
    angles: dict[str, list[list[float]]] = {m: [[] for _ in cfg.sizes] for m in methods[1:]}
    norms: dict[str, list[list[float]]] = {m: [[] for _ in cfg.sizes] for m in methods[1:]}
    seqs = cfg.chunk // cfg.seq_len
    done = 0
    while done < cfg.sizes[-1]:
        batch = random_windows(tokens, cfg.seq_len, seqs, rng)[:, :-1]
        with torch.no_grad():
            t_logits = teacher(batch).logits.reshape(-1, teacher.config.vocab_size).float()
        s_logits = student(batch).logits.reshape(-1, student.config.vocab_size)
        grads: dict[str, Tensor] = {"full": logit_grad(s_logits, dense_kl(t_logits))}
        for k in cfg.topk:
            top = sample_topk(t_logits, k)
            ids, probs = top.to_padded()
            probs = probs / probs.sum(dim=-1, keepdim=True)  # renormalised top-k
            grads[f"topk_{k}"] = logit_grad(s_logits, sparse_loss(ids, probs))
            entries[f"topk_{k}"] += float(top.entry_counts().sum())
        for method, n in rounds.items():
            drawn = sample_random(t_logits, n, method=method, generator=generator)
            ids, probs = drawn.to_padded()
            grads[f"rs_{method}"] = logit_grad(s_logits, sparse_loss(ids, probs))
            entries[f"rs_{method}"] += float(drawn.entry_counts().sum())
        del t_logits
        for i, m in enumerate(methods):  # backprop each logit gradient through the student
            param_grads = torch.autograd.grad(
                s_logits, params, grad_outputs=grads[m], retain_graph=i < len(methods) - 1
            )
            flat = torch.cat([g.reshape(-1) for g in param_grads]).double()
            for size in cfg.sizes:
                blocks[size][m] += flat
        del grads, s_logits
        done += cfg.chunk
        for j, size in enumerate(cfg.sizes):
            if done % size:
                continue
            ref = blocks[size]["full"]  # a block done: the gradient of its mean is the sum / size
            for m in methods[1:]:
                got = blocks[size][m]
                cos = float(torch.dot(got, ref) / (got.norm() * ref.norm()))
                angles[m][j].append(math.degrees(math.acos(max(-1.0, min(1.0, cos)))))
                norms[m][j].append(float(got.norm() / ref.norm()))
            for acc in blocks[size].values():
                acc.zero_()
    return angles, norms, {m: v / done for m, v in entries.items()}


def log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)


def loglog_slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def plot(result: dict[str, Any]) -> Any:
    import matplotlib.pyplot as plt

    sizes = result["positions"]
    fig, (ax_a, ax_n) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "topk_12": ("tab:red", "o"),
        "topk_50": ("tab:orange", "o"),
        "topk_300": ("tab:olive", "o"),
        "rs_multinomial": ("tab:blue", "s"),
        "rs_systematic": ("tab:cyan", "s"),
    }
    for m, (color, marker) in styles.items():
        a, n = result["angle_deg"][m], result["norm_ratio"][m]
        label = m.replace("topk_", "top-k ").replace("rs_", "RS ≈12 unique, ")
        ax_a.errorbar(sizes, a["mean"], yerr=a["std"], color=color, marker=marker, label=label, capsize=3)
        ax_n.errorbar(sizes, n["mean"], yerr=n["std"], color=color, marker=marker, label=label, capsize=3)
    first = result["angle_deg"]["rs_multinomial"]["mean"][0]
    ax_a.plot(sizes, [first * math.sqrt(sizes[0] / s) for s in sizes], "k:", label="∝ 1/√positions")
    paper_x = 1_000_000
    for key, color in (("topk_12", "tab:red"), ("topk_50", "tab:orange"), ("topk_300", "tab:olive"), ("rs_12", "k")):
        ax_a.plot(paper_x, PAPER_TABLE3[key]["angle_deg"], "x", color=color, markersize=9)
        ax_n.plot(paper_x, PAPER_TABLE3[key]["norm_ratio"], "x", color=color, markersize=9)
    ax_a.plot([], [], "kx", label="paper Table 3 (~1M tokens)")
    ax_a.set(xscale="log", yscale="log", xlabel="positions in the batch", ylabel="angle to full-KD gradient (°)")
    ax_n.set(xscale="log", xlabel="positions in the batch", ylabel="‖g_sparse‖ / ‖g_full KD‖")
    ax_n.axhline(1.0, color="grey", lw=0.8)
    from matplotlib.ticker import ScalarFormatter

    ax_a.yaxis.set_major_formatter(ScalarFormatter())
    ax_a.yaxis.set_minor_formatter(ScalarFormatter())
    ax_a.grid(True, which="both", alpha=0.3)
    ax_n.grid(True, which="both", alpha=0.3)
    ax_a.legend(fontsize=8)
    fig.suptitle(
        f"Student-parameter gradient vs full KD, teacher {result['setup']['teacher']} "
        f"(mean ± std over blocks of each size, {result['setup']['seeds']} streams)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def describe(model: Any, shape: StudentShape, loss: float, val: float) -> dict[str, Any]:
    return {
        **asdict(shape),
        "params": sum(p.numel() for p in model.parameters()),
        "train_loss_end": round(loss, 4),
        "val_loss": round(val, 4),
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    cfg = SMOKE if args.smoke else FULL
    if any(size % cfg.chunk for size in cfg.sizes) or cfg.chunk % cfg.seq_len:
        raise ValueError(f"sizes {cfg.sizes} must be multiples of chunk {cfg.chunk}, itself of seq_len {cfg.seq_len}")
    start = time.perf_counter()
    work = args.out / ".work" / (f"{NAME}_smoke" if args.smoke else NAME)
    teacher_spec = teacher_for(args.smoke, work)
    corpus = build_corpus(work / "corpus", teacher_spec.tokenizer(), max_bytes=cfg.max_bytes)
    train, val = np.array(corpus.tokens("train")), np.array(corpus.tokens("val"))
    teacher = teacher_spec.model()
    vocab = int(teacher.config.vocab_size)
    rng = np.random.default_rng(args.seed)
    shape = cfg.student
    student = make_llama(
        vocab, hidden=shape.hidden, layers=shape.layers, heads=shape.heads, seq_len=cfg.seq_len, seed=args.seed + 1
    )
    loss = train_lm(student, train, shape, cfg.seq_len, rng)
    student_info = describe(student, shape, loss, val_loss(student, val, cfg.seq_len, rng))
    log(f"teacher {teacher_spec.name}; student {student_info}", start)
    trained = time.perf_counter()

    # tune N on a calibration batch of teacher distributions (positions not used below)
    with torch.no_grad():
        calib = random_windows(train, cfg.seq_len, max(1, cfg.calib_positions // cfg.seq_len), rng)[:, :-1]
        calib_logits = torch.cat([teacher(part).logits.reshape(-1, vocab).float() for part in calib.split(8)])
    methods: tuple[RSMethod, ...] = ("multinomial", "systematic")
    rounds = {m: tune_rounds(calib_logits, m, cfg.target_unique, args.seed) for m in methods}
    probs = calib_logits.softmax(dim=-1)
    entropy = float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean())
    sorted_probs = probs.sort(dim=-1, descending=True).values
    topk_mass = {str(k): round(float(sorted_probs[:, :k].sum(-1).mean()), 4) for k in cfg.topk}
    del calib_logits, probs, sorted_probs
    log(f"rounds for ≈{cfg.target_unique} unique ids: {rounds}; top-k mass {topk_mass}", start)

    per_seed: list[dict[str, Any]] = []
    for s in range(cfg.seeds):
        angles, norms, entries = run_seed(cfg, teacher, student, train, rounds, (args.seed, s))
        per_seed.append({"angle_deg": angles, "norm_ratio": norms, "entries_per_position": entries})
        last = {m: round(a[-1][0], 2) for m, a in angles.items()}
        log(f"seed {s}: angles (degrees) at {cfg.sizes[-1]} positions {last}", start)
    names = list(per_seed[0]["angle_deg"])

    def stats(key: str, m: str) -> dict[str, list[float]]:
        per_size = [[v for r in per_seed for v in r[key][m][j]] for j in range(len(cfg.sizes))]
        return {
            "mean": [round(float(np.mean(v)), 4) for v in per_size],
            "std": [round(float(np.std(v)), 4) for v in per_size],
            "samples": [len(v) for v in per_size],
        }

    sizes = list(cfg.sizes)
    angle = {m: stats("angle_deg", m) for m in names}
    norm = {m: stats("norm_ratio", m) for m in names}
    slopes = {m: round(loglog_slope(sizes, angle[m]["mean"]), 3) for m in names}
    entries_mean = {m: round(float(np.mean([r["entries_per_position"][m] for r in per_seed])), 3) for m in names}
    wall = time.perf_counter() - start
    result: dict[str, Any] = {
        "experiment": NAME,
        "smoke": args.smoke,
        "seed": args.seed,
        "setup": {
            "teacher": teacher_spec.name,
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "corpus": corpus.description,
            "vocab_size": vocab,
            "seq_len": cfg.seq_len,
            "student": student_info,
            "training": "student: AdamW, cross-entropy on random train windows, from random init; teacher as shipped",
            "seeds": cfg.seeds,
            "chunk_positions": cfg.chunk,
            "rs_rounds": rounds,
            "rs_target_unique": cfg.target_unique,
            "teacher_entropy_nats": round(entropy, 3),
            "teacher_topk_mass": topk_mass,
            "gradient": "all student parameters; full KD = dense KL(p_teacher || p_student) summed over positions "
            "/ positions; sparse = sparse_kd_loss(reduction='sum') / positions, top-k renormalised",
        },
        "methods": names,
        "positions": sizes,
        "angle_deg": angle,
        "norm_ratio": norm,
        "angle_loglog_slope": slopes,
        "entries_per_position": entries_mean,
        "per_seed": per_seed,
        "paper_table3": PAPER_TABLE3,
        "train_seconds": round(trained - start, 1),
        "wall_seconds": round(wall, 1),
    }
    result["summary"] = {
        "experiment": NAME,
        "smoke": args.smoke,
        "positions": sizes[-1],
        "angle_deg": {m: round(angle[m]["mean"][-1], 2) for m in names},
        "norm_ratio": {m: round(norm[m]["mean"][-1], 3) for m in names},
        "angle_loglog_slope": slopes,
        "rs_rounds": rounds,
        "wall_seconds": result["wall_seconds"],
    }
    save_json(args.out, NAME, result)
    import matplotlib.pyplot as plt

    fig = plot(result)
    save_figure(args.out, NAME, fig)
    plt.close(fig)
    print(json.dumps(result["summary"]))


if __name__ == "__main__":
    main()
