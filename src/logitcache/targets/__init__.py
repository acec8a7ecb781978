"""Sparse targets in torch: the samplers (:mod:`.sampling`), :class:`~.sparse.SparseTargets` and the
torch decoder (:mod:`.sparse`), and LM-like synthetic logits (:mod:`.synthetic`)."""

import logitcache._torch  # noqa: F401  (torch, or an ImportError naming the extra)
