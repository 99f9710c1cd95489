"""PRDC dataset constraint (Ran et al., "Policy Regularization with Dataset Constraint for Offline RL",
ICML 2023; LAMDA-RL/PRDC @ 9f38464 ``prdc.py``; docs/agents/prdc.md).

The policy is pulled towards the action of the dataset transition nearest to ``(beta s, pi(s))``:

    (s_hat, a_hat) = argmin_{(s_i, a_i) in D} || (beta s, pi(s)) - (beta s_i, a_i) ||_2      (dataset constraint)
    L_pi = -lambda * mean Q_1(s, pi(s)) + mean_{batch, dims} (pi(s) - a_hat)^2,  lambda = alpha / mean|Q_1| (sg)

The first term is the TD3 learner's (``agent.q_norm_alpha = alpha``); this regularizer adds the second,
``weight * mean (pi(s) - a_hat)^2``, with ``a_hat`` a constant (the search is not differentiable; docs/agents/prdc.md).
States in the keys are normalised exactly as the training batches (the buffer's ``observations``), actions
are the raw dataset actions; the index over all N rows is built once, in ``bind``.

Deviations from the official code, and why:

* Search structure: the official code ships ``[beta s, pi(s)]`` to the CPU and calls
  ``scipy.spatial.KDTree.query`` every actor step. We use :mod:`rlreg.data.knn`: on CPU a ``cKDTree``
  search that also proves the neighbour has no tie, on CUDA an exact chunked brute force on the device
  (no host round trip, one boolean sync); on a CPU with a large dataset (``backend=auto``) both, each actor
  step served by whichever is currently faster (the brute force wins when pi(s) is far from the data in
  many dimensions, where the tree, official or ours, is slowest). All paths return KDTree's neighbour; **exact ties** (e.g. duplicated
  rows) go to the lowest row index, where KDTree's choice depends on its traversal: our tie-break is
  explicit and the same on all paths, so CPU and GPU runs train on the same targets. Proving that there is
  no tie costs the tree search something: on CPU it ran at 0.2-1.2x the official query's speed (cheap
  near-data queries the worst; ``scripts/bench_knn.py``, ``results/bench_updates.md``); like it, it grows
  steeply with the distance between ``pi(s)`` and the data, which is where ``auto`` can switch to the
  constant-cost brute force.
* Search hint (tree path, ``k = 1``): the batch row's own key ``(beta s, a)`` is in the index, so the
  nearest neighbour is at most ``|pi(s) - a|`` away; that bound prunes the tree search. It cannot change
  the answer (a wrong bound, e.g. online rows during fine-tuning, only costs a second search).
* ``k``: as in the official ``KDTree.query(key, k=[k])`` the k-th nearest neighbour (not the k nearest)
  is the target; every shipped setting uses ``k = 1``.
* ``beta`` defaults to 2.0 (README table, d3rlpy), not the official CLI default 1.0 (docs/agents/prdc.md).
* ``weight`` (official: fixed 1) exists so that the term can be scaled when stacked with other
  regularizers; the PRDC agent keeps 1.
* The AntMaze reward shaping ``10000 r - 1`` is applied to rewards (``dataset.reward_transform=affine``),
  as after the official fix 5c8aaf8, not to next states as in the first release (docs/agents/prdc.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rlreg.data.buffers import Batch
from rlreg.data.knn import BACKENDS, AutoIndex, KNNIndex, TreeIndex, build_index
from rlreg.regularizers import register
from rlreg.regularizers.base import ActorContext, Regularizer, SetupContext


@dataclass
class PRDCConfig:
    beta: float = 2.0  # state scale in the search key (README: 2.0 locomotion, 7.5 AntMaze; CLI default 1.0)
    k: int = 1  # the k-th nearest neighbour is the target (official k=[k])
    weight: float = 1.0  # coefficient of the dataset-constraint term (official: 1)
    backend: str = "auto"  # auto (CUDA: brute force; CPU: the faster of tree and brute force, timed) | tree | brute
    workers: int = 0  # tree: query threads (0: torch.get_num_threads(), i.e. the run's `threads`)
    hint: bool = True  # tree: prune with the batch row's own distance |pi(s) - a| (never changes the result)
    chunk_rows: int = 0  # brute: dataset rows per distance matmul (0: 2^18 on CUDA, 2^14 on CPU)
    candidates: int = 16  # brute: approximate top-K per query re-checked in float64
    precision: str = "float32"  # brute: matmul precision, float32 (TF32 off) | float64


def dataset_key(observations: Tensor, actions: Tensor, beta: float) -> Tensor:
    """The search key ``[beta * s, a]`` (float32). Index rows and queries both come from here, so a batch row's
    own key is bit-identical to its row in the index."""
    return torch.cat([observations.to(torch.float32) * beta, actions.to(torch.float32)], dim=-1)


@register("prdc", PRDCConfig)
class PRDCRegularizer(Regularizer):

    def __init__(self, config: PRDCConfig) -> None:
        super().__init__()
        checks = {
            "beta": math.isfinite(config.beta) and config.beta >= 0,
            "k": config.k >= 1,
            "weight": math.isfinite(config.weight) and config.weight >= 0,
            "workers": config.workers >= 0,
            "chunk_rows": config.chunk_rows >= 0,
            "candidates": config.candidates >= 1,
        }
        for option, ok in checks.items():
            if not ok:
                raise ValueError(f"regularizer.prdc.{option}={getattr(config, option)!r} is invalid "
                                 "(beta, weight: finite and >= 0; k, candidates: >= 1; workers, chunk_rows: >= 0)")
        if config.backend not in BACKENDS:
            raise ValueError(
                f"regularizer.prdc.backend={config.backend!r} is unknown; choose one of {', '.join(BACKENDS)}"
            )
        if config.precision not in ("float32", "float64"):
            raise ValueError(f"regularizer.prdc.precision={config.precision!r} is unknown; choose float32 or float64")
        self.config = config
        self.beta = float(config.beta)
        self.k = int(config.k)
        self.weight = float(config.weight)
        self.index: KNNIndex | None = None
        self.actions: Tensor | None = None

    def bind(self, learner, ctx: SetupContext) -> None:  # type: ignore[no-untyped-def]
        super().bind(learner, ctx)
        buffer = ctx.buffer
        if buffer is None:
            raise ValueError("regularizer prdc needs the offline dataset (SetupContext.buffer): use it with "
                             "trainer=offline (or finetune), not in a purely online run")
        if not buffer.actions.is_floating_point():
            raise ValueError("regularizer prdc needs continuous (float) dataset actions")
        if self.k > len(buffer):
            raise ValueError(f"regularizer.prdc.k={self.k} exceeds the dataset size {len(buffer)}")
        cfg = self.config
        self.actions = buffer.actions.to(ctx.device)
        keys = dataset_key(buffer.observations, buffer.actions, self.beta)
        self.index = build_index(
            keys,
            backend=cfg.backend,
            device=ctx.device,
            workers=cfg.workers or None,
            chunk_rows=cfg.chunk_rows,
            candidates=cfg.candidates,
            precision=cfg.precision,
        )
        self.use_hint = cfg.hint and self.k == 1 and isinstance(self.index, (TreeIndex, AutoIndex))

    def nearest_actions(
        self, observations: Tensor, policy_actions: Tensor, dataset_actions: Tensor | None = None
    ) -> Tensor:
        """``a_hat``: the action of the k-th nearest dataset row to ``(beta s, pi(s))`` (no gradient)."""
        assert self.index is not None and self.actions is not None, "PRDCRegularizer.bind was not called"
        with torch.no_grad():
            pi = policy_actions.detach()
            key = dataset_key(observations, pi, self.beta)
            bound = None
            if self.use_hint and dataset_actions is not None:
                # the row (beta s, a) of this batch transition is in the index: |pi(s) - a| bounds the NN distance
                bound = (pi.to(torch.float64) - dataset_actions.to(torch.float64)).norm(dim=1)
            idx, _ = self.index.query(key, k=self.k, upper_bound=bound)
            return self.actions[idx.to(self.actions.device)]

    def actor_terms(self, batch: Batch, ctx: ActorContext) -> dict[str, Tensor]:
        a_hat = self.nearest_actions(batch.observations, ctx.actions, batch.actions)
        # official: F.mse_loss(pi, a_hat), a mean over batch and action dimensions (docs/agents/prdc.md)
        return {"loss": self.weight * (ctx.actions - a_hat).pow(2).mean()}
