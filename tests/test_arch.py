"""The maths of architecture derivation: eq. 5 (temperature), eqs. 7-11 (DST), the top-2 rule."""
import math

import pytest
import torch

from entrannas import derive_top2, dst_coefficients
from entrannas.arch import (EDGES, derive_dst, dst_regulariser, edge_index, edge_normalization, node_edges,
                            softmax_t, top2_scores)


def _rows_from_probs(probs):
    """alpha rows whose softmax at tau=1 is exactly `probs`."""
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_edge_order_is_darts():
    assert EDGES[:5] == ((0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
    assert len(EDGES) == 14 and edge_index(4, 5) == 13
    assert [list(node_edges(j)) for j in range(2, 6)] == [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]


def test_temperature_sharpens_softmax():
    a = torch.tensor([[1.0, 0.0, -1.0]])
    hot, cold = softmax_t(a, 5.0), softmax_t(a, 0.1)
    assert torch.allclose(hot.sum(-1), torch.ones(1)) and cold[0, 0] > 0.999 > hot[0, 0]


def test_dst_hand_made_example():
    alpha = torch.zeros(14, 3, dtype=torch.float64)
    alpha[0] = _rows_from_probs([0.6, 0.3, 0.1])  # node 2 <- 0
    alpha[1] = _rows_from_probs([0.2, 0.2, 0.6])  # node 2 <- 1
    beta = torch.zeros(4, dtype=torch.float64)
    # t = 0.5: p_hat = p / 0.6, so only the two 0.6 entries survive.
    q = dst_coefficients(alpha, beta, tau=1.0)
    assert torch.allclose(q[0], torch.tensor([1.0, 0, 0], dtype=torch.float64))
    assert torch.allclose(q[1], torch.tensor([0, 0, 1.0], dtype=torch.float64))
    # t = 0.2: q = relu(p_hat - 0.2), then normalised per edge (eq. 9).
    beta[0] = math.log(0.25)  # sigmoid = 0.2
    q = dst_coefficients(alpha, beta, tau=1.0)
    q0 = torch.tensor([1 - 0.2, 0.5 - 0.2, 0.0], dtype=torch.float64)
    q1 = torch.tensor([1 / 3 - 0.2, 1 / 3 - 0.2, 1 - 0.2], dtype=torch.float64)
    assert torch.allclose(q[0], q0 / q0.sum()) and torch.allclose(q[1], q1 / q1.sum())


def test_dst_prunes_whole_edges_and_keeps_one_connection_per_node():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        alpha = torch.randn(14, 7, generator=g, dtype=torch.float64) * 3
        beta = torch.randn(4, generator=g, dtype=torch.float64) * 3
        q = dst_coefficients(alpha, beta, tau=0.7)
        sums = q.sum(-1)
        active = sums > 0
        assert torch.allclose(sums[active], torch.ones_like(sums[active]))  # eq. 9
        assert (q[~active] == 0).all()
        for j in range(2, 6):
            assert active[node_edges(j).start:node_edges(j).stop].any(), "node lost every input"
        sel = derive_dst(q)
        assert all(len(pairs) >= 1 for pairs in sel)
        assert all(0 <= i < m + 2 for m, pairs in enumerate(sel) for i, _ in pairs)
    # A high threshold prunes an edge whose best op is weak relative to the node's best.
    alpha = torch.zeros(14, 3, dtype=torch.float64)
    alpha[0] = torch.tensor([8.0, 0, 0])
    q = dst_coefficients(alpha, torch.zeros(4, dtype=torch.float64), 1.0)
    assert (q[1] == 0).all() and q[0, 0] == 1.0


def test_dst_gradients_reach_alpha_and_beta():
    torch.manual_seed(0)
    alpha = (1e-1 * torch.randn(14, 7)).requires_grad_()
    beta = torch.zeros(4, requires_grad=True)
    w = torch.randn(14, 7)
    loss = (dst_coefficients(alpha, beta, 1.0) * w).sum() + dst_regulariser(beta)
    loss.backward()
    assert alpha.grad.abs().sum() > 0 and torch.isfinite(alpha.grad).all()
    assert (beta.grad != 0).all() and torch.isfinite(beta.grad).all()


def test_dst_regulariser_is_mean_minus_log_threshold():
    beta = torch.tensor([0.0, 1.0, -2.0, 3.0])
    expected = (-torch.log(torch.sigmoid(beta))).mean()
    assert torch.allclose(dst_regulariser(beta), expected)
    assert torch.isfinite(dst_regulariser(torch.tensor([-200.0, 0, 0, 0])))  # no log(0)


def test_dst_rejects_bad_shapes():
    with pytest.raises(ValueError, match="alpha"):
        dst_coefficients(torch.zeros(10, 7), torch.zeros(4))
    with pytest.raises(ValueError, match="beta"):
        dst_coefficients(torch.zeros(14, 7), torch.zeros(3))


def _darts_rule(W, none_index):
    """The DARTS genotype() parser, restated independently of the library."""
    gene, start, n = [], 0, 2
    for _ in range(4):
        end = start + n
        rows = W[start:end]
        edges = sorted(range(n), key=lambda x: -max(rows[x][k] for k in range(len(rows[x])) if k != none_index))[:2]
        node = []
        for j in edges:
            k_best = None
            for k in range(len(rows[j])):
                if k != none_index and (k_best is None or rows[j][k] > rows[j][k_best]):
                    k_best = k
            node.append((j, k_best))
        gene.append(tuple(node))
        start, n = end, n + 1
    return tuple(gene)


def test_top2_equals_darts_rule_on_random_alpha():
    g = torch.Generator().manual_seed(3)
    for _ in range(100):
        p = softmax_t(torch.randn(14, 8, generator=g), 1.0)
        assert derive_top2(p, none_index=0) == _darts_rule(p.tolist(), 0)


def test_top2_hand_made():
    W = torch.full((14, 8), 0.1)
    W[0, 0] = 0.9  # `none` strongest on edge 0->2: ignored by the rule
    W[0, 4] = 0.3
    W[1, 6] = 0.5
    W[4, 2] = 0.8  # node 3: edge 2->3 with avg_pool
    W[3, 5] = 0.7  # node 3: edge 1->3 with sep_conv_5x5
    sel = derive_top2(W, none_index=0)
    assert sel[0] == ((1, 6), (0, 4))
    assert sel[1] == ((2, 2), (1, 5))
    assert all(k != 0 for pairs in sel for _, k in pairs)


@pytest.mark.parametrize("method", ["entrannas", "pcdarts"])
def test_top2_ranks_large_margins_late_in_annealing(method):
    """At tau 0.1, float32 p rounds to exactly 1.0 on every edge whose top op leads by more
    than ~1.7: ranked on p, the three edges into node 3 below would tie and the rule would
    keep edges 0 and 1 by index. The super-net ranks their true margins: 2 (4.0), then 0 (3.0)."""
    from entrannas import SuperNet
    net = SuperNet(C=8, layers=5, num_classes=10, method=method)
    with torch.no_grad():
        net.alpha_normal.zero_()
        for i, margin in ((0, 3.0), (1, 2.0), (2, 4.0)):
            net.alpha_normal[edge_index(i, 3), 4] = margin
        if method == "pcdarts":
            net.edge_beta_normal.zero_()  # equal edge weights: the op margins decide
    net.tau = 0.1
    p = net.coefficients("normal").detach()
    assert all(float(p[edge_index(i, 3)].max()) == 1.0 for i in range(3))  # the float32 tie
    assert net.arch_state().selection["normal"][1] == ((2, 4), (0, 4))


def test_top2_scores_rank_as_p_does():
    g = torch.Generator().manual_seed(5)
    for tau in (5.0, 1.0, 0.3):
        alpha = torch.randn(14, 8, generator=g, dtype=torch.float64)
        beta = torch.randn(14, generator=g, dtype=torch.float64)
        p = softmax_t(alpha, tau) * edge_normalization(beta).unsqueeze(-1)
        assert derive_top2(top2_scores(alpha, tau, beta), 0) == derive_top2(p, 0) == _darts_rule(p.tolist(), 0)


def test_dst_fills_the_cell_again_as_tau_goes_to_zero():
    """docs/design.md, "DST at a small temperature": eq. 5 is a softmax over one edge's ops, so
    at a small tau every edge's top op has p_hat near 1 (eq. 7) and passes any threshold short
    of 1, where a moderate tau prunes. The paper's ImageNet DST schedule ends at tau 0.0057."""
    g = torch.Generator().manual_seed(0)
    alpha = 0.5 * torch.randn(14, 7, generator=g)
    beta = torch.full((4,), 3.0)  # t = 0.95
    edges = {tau: sum(len({i for i, _ in node}) for node in derive_dst(dst_coefficients(alpha, beta, tau)))
             for tau in (1.0, 0.1, 0.0057)}
    assert edges[1.0] < 14 and edges[0.1] < 14
    assert edges[0.0057] == 14
    # ... and each edge then keeps exactly its top op
    sel = derive_dst(dst_coefficients(alpha, beta, 0.0057))
    top = alpha.argmax(dim=-1).tolist()
    assert all(k == top[edge_index(i, m + 2)] for m, node in enumerate(sel) for i, k in node)
