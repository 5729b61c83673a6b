"""Architecture parameters and derivation: temperature softmax (eq. 5), the DARTS top-2 rule
(eq. 4), differentiable sparsification for topology (EnTranNAS-DST, eqs. 7-11), and the edge
normalisation of PC-DARTS (the baseline of Table 2).

Everything here reads alpha/beta only, so deriving a cell every iteration is cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "NUM_NODES",
    "EDGES",
    "edge_index",
    "node_edges",
    "Selection",
    "softmax_t",
    "dst_coefficients",
    "derive_top2",
    "derive_dst",
    "dst_regulariser",
    "edge_normalization",
    "top2_scores",
    "Temperature",
    "temperature",
]

NUM_NODES = 4  # intermediate nodes per cell; nodes 0 and 1 are the cell inputs

# DARTS edge order: node 2 <- 0, 1; node 3 <- 0, 1, 2; node 4 <- 0..3; node 5 <- 0..4.
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for j in range(2, 2 + NUM_NODES) for i in range(j))
_EDGE_INDEX = {e: n for n, e in enumerate(EDGES)}


def edge_index(i: int, j: int) -> int:
    return _EDGE_INDEX[(i, j)]


def node_edges(j: int) -> range:
    """Rows of alpha holding the edges into intermediate node j (j = 2..5)."""
    start = (j - 2) * (j + 1) // 2  # 0, 2, 5, 9
    return range(start, start + j)


# A derived cell as the cells consume it: per intermediate node, the (input, op index) pairs.
Selection = tuple[tuple[tuple[int, int], ...], ...]


def softmax_t(alpha: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 5: p = softmax(alpha / tau) over the ops of each edge.

    The row maximum is subtracted before dividing by tau (softmax does not change, nor does
    its gradient: the shift is a constant), so a small annealed tau cannot overflow
    alpha / tau to inf, whose inf - inf inside softmax would make p NaN."""
    return torch.softmax((alpha - alpha.detach().amax(dim=-1, keepdim=True)) / tau, dim=-1)


def dst_coefficients(alpha: torch.Tensor, beta: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """q_hat of EnTranNAS-DST (eqs. 5, 7-9) for one cell type.

    alpha: [14, K] in DARTS edge order; beta: [4], one threshold logit per intermediate node.
    Returns q_hat of alpha's shape: zero on pruned connections, summing to 1 over the ops of
    every edge that keeps at least one, differentiable w.r.t. alpha and beta.
    """
    if alpha.dim() != 2 or alpha.shape[0] != len(EDGES):
        raise ValueError(f"alpha must have shape [{len(EDGES)}, K], got {list(alpha.shape)}")
    if beta.shape != (NUM_NODES,):
        raise ValueError(f"beta must have shape [{NUM_NODES}], got {list(beta.shape)}")
    p = softmax_t(alpha, tau)
    out = []
    for m, j in enumerate(range(2, 2 + NUM_NODES)):
        rows = node_edges(j)
        pj = p[rows.start:rows.stop]
        p_hat = pj / pj.max()  # eq. 7: connection normalisation over all (i, k) into node j
        # t = sigmoid(beta) < 1, so the strongest connection (p_hat = 1) always survives; but
        # in float32 sigmoid rounds to 1 for beta > ~16.6, which would prune every input of
        # the node. Keep t at most the largest float below 1 (a no-op for smaller beta).
        t = torch.sigmoid(beta[m]).clamp(max=1 - torch.finfo(beta.dtype).eps / 2)
        q = torch.relu(p_hat - t)  # eq. 8
        s = q.sum(dim=-1, keepdim=True)
        # eq. 9; edges with no surviving op keep q_hat = 0 (the safe denominator avoids 0/0,
        # whose NaN would poison the gradient even through torch.where).
        out.append(q / torch.where(s > 0, s, torch.ones_like(s)))
    return torch.cat(out, dim=0)


def edge_normalization(edge_beta: torch.Tensor, log: bool = False) -> torch.Tensor:
    """PC-DARTS' edge weights for one cell type: per intermediate node, a softmax of the
    edge betas over the node's incoming edges. edge_beta: [14] in DARTS edge order; returns
    [14], summing to 1 over each node's edges (`log`: their logarithms). No temperature:
    eq. 5 anneals the op choice, and PC-DARTS runs at tau 1 anyway."""
    if edge_beta.shape != (len(EDGES),):
        raise ValueError(f"edge betas must have shape [{len(EDGES)}], got {list(edge_beta.shape)}")
    norm = torch.log_softmax if log else torch.softmax
    return torch.cat([norm(edge_beta[r.start:r.stop], dim=0)
                      for r in map(node_edges, range(2, 2 + NUM_NODES))])


def top2_scores(alpha: torch.Tensor, tau: float, edge_beta: torch.Tensor | None = None) -> torch.Tensor:
    """What the top-2 rule ranks, for one cell type: log p (eq. 5), plus the log of PC-DARTS'
    edge weight where there is one, in float64 on the host.

    They rank edges and ops exactly as p (times the edge weight) does, but never round to a
    tie: in float32, p rounds to exactly 1.0 on every edge whose strongest op leads the
    others by more than about 17 tau (1.7 at the paper's last tau of 0.1, within reach of the
    ImageNet search's arch lr of 6e-3), and the rule would then rank all those edges by their
    index, whatever their margins."""
    score = torch.log_softmax(alpha.detach().to("cpu", torch.float64) / tau, dim=-1)
    if edge_beta is not None:
        score = score + edge_normalization(edge_beta.detach().to("cpu", torch.float64), log=True).unsqueeze(-1)
    return score


def dst_regulariser(betas: torch.Tensor) -> torch.Tensor:
    """Eq. 11's sparsity term for one cell type: mean over nodes of -log(sigmoid(beta_j)).

    Written as softplus(-beta), which equals -log(sigmoid(beta)) without underflow.
    """
    return torch.nn.functional.softplus(-betas).mean()


def derive_top2(weights: torch.Tensor, none_index: int | None) -> Selection:
    """The DARTS rule: per node, the two edges with the largest non-`none` weight, and on each
    the argmax non-`none` op. Edges are listed strongest first; ties go to the lower index.
    `weights`: p, or any increasing function of it (`top2_scores`: log p, which does not
    round to ties)."""
    w = weights.detach().to("cpu", torch.float64, copy=True)  # a copy: it is written below
    if none_index is not None:
        w[:, none_index] = float("-inf")
    best, best_op = w.max(dim=-1)
    best, best_op = best.tolist(), best_op.tolist()
    nodes = []
    for j in range(2, 2 + NUM_NODES):
        rows = node_edges(j)
        ranked = sorted(range(j), key=lambda i: -best[rows.start + i])[:2]  # stable sort
        nodes.append(tuple((i, best_op[rows.start + i]) for i in ranked))
    return tuple(nodes)


def derive_dst(q_hat: torch.Tensor) -> Selection:
    """Eq. 10: S_j = {(i, k) : q_hat > 0}, in (input, op) order."""
    active = (q_hat.detach() > 0).to("cpu")
    nodes = []
    for j in range(2, 2 + NUM_NODES):
        rows = node_edges(j)
        pairs = active[rows.start:rows.stop].nonzero().tolist()
        nodes.append(tuple((i, k) for i, k in pairs))
    return tuple(nodes)


@dataclass(frozen=True)
class Temperature:
    """tau(epoch) = tau0 * decay ** epoch (the paper anneals once per epoch)."""

    tau0: float = 1.0
    decay: float = 1.0

    def __call__(self, epoch: float) -> float:
        return self.tau0 * self.decay ** epoch

    @staticmethod
    def decay_reaching(tau0: float, tau_final: float, epochs: int) -> float:
        """The decay with tau(epochs - 1) = tau_final: the last epoch ends the annealing where
        the paper's 50 epochs end it, whatever the epoch count (a compressed schedule, not a
        truncated one). A single epoch is both first and last: it keeps tau0 (decay 1)."""
        if tau0 <= 0 or tau_final <= 0:
            raise ValueError("tau0 and tau_final must be positive")
        if epochs <= 1:
            return 1.0
        return (tau_final / tau0) ** (1.0 / (epochs - 1))


def temperature(tau0: float, decay: float, epoch: float) -> float:
    return Temperature(tau0, decay)(epoch)
