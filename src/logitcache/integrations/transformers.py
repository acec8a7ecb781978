"""A Hugging Face ``Trainer`` that distils from the cache: ``pip install 'logitcache[trainer]'``.

::

    loader = SparseKDLoader(CacheClient(["cache:50051"]), shards=[0, 1], batch_size=8, drop_last=True)
    trainer = SparseKDTrainer(model=student, args=TrainingArguments("out", max_steps=1000), loader=loader,
                              kd_params=KDParams(ce_weight=0.1))
    trainer.train()                                   # or train(resume_from_checkpoint=True)

What it changes in ``Trainer``:

* **Data.** The batches are the loader's, already partitioned by rank (the loader reads
  ``torch.distributed``'s rank and world size), so no sampler or ``DataLoader`` wraps them; the
  loader's ``set_epoch`` is called every epoch. ``per_device_train_batch_size`` is not used: the
  loader's ``batch_size`` is. Under DDP pass ``drop_last=True`` so that every rank takes as many
  steps.
* **Loss.** :func:`~logitcache.kd.sparse_kd_loss` of the student's logits against the cached targets,
  with ``kd_params`` (``ce_weight`` mixes in cross-entropy on the batch's labels; padded positions
  are masked). ``fused_linear=True`` computes it from the last hidden state and the LM head with
  :func:`~logitcache.kd.fused_linear_sparse_kd_loss` instead, never building the ``[B, T, V]``
  logits (single process only: it calls the model's decoder past any DDP wrapper).
* **Checks.** At construction the student's output size must cover the teacher's vocabulary
  (:meth:`~logitcache.training.SparseKDLoader.check_student`; a padded, larger vocabulary is fine),
  and ``tokenizer=`` (or ``processing_class=``) must be the teacher's when the shards record one.
* **Checkpoints.** Every checkpoint holds each rank's loader state
  (``logitcache_loader_rank{r}.json``); ``train(resume_from_checkpoint=...)`` restores it and
  continues at the first batch not yet trained on, reading nothing it skips (``Trainer``'s own
  data skipping, which would read and drop every earlier batch, is the identity for the loader).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from logitcache.extras import require

require("transformers", extra="trainer", by="logitcache.integrations.transformers")
require("accelerate", extra="trainer", by="logitcache.integrations.transformers")

import transformers.trainer as hf_trainer  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from transformers import Trainer  # noqa: E402
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint  # noqa: E402

from logitcache.kd import KDParams, fused_linear_sparse_kd_loss, sparse_kd_loss  # noqa: E402
from logitcache.training import SparseKDBatch, SparseKDLoader  # noqa: E402

__all__ = ["LOADER_STATE", "SparseKDTrainer"]

LOADER_STATE = "logitcache_loader_rank{rank}.json"  # in each checkpoint folder, one per rank


class SparseKDTrainer(Trainer):
    """``transformers.Trainer`` over a :class:`~logitcache.training.SparseKDLoader` (see the module docstring)."""

    def __init__(
        self,
        model: Any,  # a transformers causal LM (PreTrainedModel)
        args: Any,  # TrainingArguments
        loader: SparseKDLoader,
        *,
        kd_params: KDParams | None = None,
        fused_linear: bool = False,
        tokenizer: Any | None = None,
        **kwargs: Any,
    ) -> None:
        if "train_dataset" in kwargs:
            raise ValueError("train_dataset: the loader is the training data; pass loader= only")
        if kd_params is not None and fused_linear and kd_params.reduction == "none":
            raise ValueError("kd_params.reduction: the fused-linear loss needs 'mean' or 'sum'")
        self.loader = loader
        self.kd_params = kd_params or KDParams()
        self.fused_linear = fused_linear
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        loader.check_student(
            vocab_size=None if head is None else int(head.weight.shape[0]),
            tokenizer=tokenizer if tokenizer is not None else kwargs.get("processing_class"),
        )
        if tokenizer is not None and "processing_class" not in kwargs:
            kwargs["processing_class"] = tokenizer
        super().__init__(model=model, args=args, train_dataset=loader, **kwargs)
        if fused_linear and self.args.world_size > 1:
            raise ValueError("fused_linear: single process only (it calls the decoder past the DDP wrapper)")

    # ----------------------------------------------------------------- data

    def get_train_dataloader(self) -> Any:
        """The loader itself: batches already per rank, with ``__len__`` and ``set_epoch``."""
        return self.loader

    def _prepare_inputs(self, inputs: Any) -> Any:
        if isinstance(inputs, SparseKDBatch):
            return inputs.to(self.args.device, non_blocking=True)
        return super()._prepare_inputs(inputs)

    # ----------------------------------------------------------------- loss

    def compute_loss(
        self,
        model: nn.Module,
        inputs: Any,  # a SparseKDBatch
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        mask = inputs.attention_mask.flatten()
        ids, probs = inputs.target_ids.flatten(0, 1), inputs.target_probs.flatten(0, 1)
        labels = inputs.labels.flatten()
        if self.fused_linear:
            inner = self.accelerator.unwrap_model(model)
            hidden = inner.get_decoder()(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
            weight = inner.get_output_embeddings().weight
            loss = fused_linear_sparse_kd_loss(
                hidden.last_hidden_state.flatten(0, 1), weight, ids, probs, labels=labels, mask=mask,
                params=self.kd_params,
            )  # fmt: skip
            outputs = None
        else:
            outputs = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask)
            logits = outputs.logits
            loss = sparse_kd_loss(logits.flatten(0, 1), ids, probs, labels=labels, mask=mask, params=self.kd_params)
        return (loss, outputs) if return_outputs else loss

    # ----------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOADER_STATE.format(rank=self.loader.rank)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.loader.state_dict()))
        os.replace(tmp, path)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; a resumed run first restores this rank's loader state from the checkpoint."""
        if resume_from_checkpoint is False or resume_from_checkpoint is None:
            return super().train(None, *args, **kwargs)
        checkpoint = (
            get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        )
        if checkpoint is None:
            raise ValueError(f"resume_from_checkpoint: no checkpoint found in {self.args.output_dir}")
        state_file = Path(checkpoint) / LOADER_STATE.format(rank=self.loader.rank)
        if not state_file.is_file():
            raise FileNotFoundError(f"{state_file}: no loader state in the checkpoint (not a SparseKDTrainer's?)")
        self.loader.load_state_dict(json.loads(state_file.read_text()))
        # Trainer skips the epoch's trained batches by reading and dropping them (accelerate's
        # skip_first_batches, which only knows DataLoaders); the loader already starts past them, so
        # for this loader the skip is the identity, and Trainer's own step accounting stays as it is.
        original = hf_trainer.skip_first_batches  # type: ignore[attr-defined]

        def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
            if dataloader is not self.loader:
                return original(dataloader, num_batches)
            done = self.loader.state_dict()["batches_done"]
            if done != num_batches:
                raise RuntimeError(
                    f"{state_file}: the loader state is at batch {done} of its epoch, the Trainer's state at "
                    f"{num_batches}: the checkpoint's files do not belong together"
                )
            return dataloader

        hf_trainer.skip_first_batches = skip_first_batches  # type: ignore[attr-defined]
        try:
            return super().train(checkpoint, *args, **kwargs)
        finally:
            hf_trainer.skip_first_batches = original  # type: ignore[attr-defined]
