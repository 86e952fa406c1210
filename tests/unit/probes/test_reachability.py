"""The reachability fit on known answers: a linear map is solved, rows do not see each other, a zero target is
refused; block groups, masks and the tests against the nulls (planted difference found, none where there is none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anima_probe.errors import InputError
from anima_probe.probes import reachability as rc


def _linear(A: torch.Tensor):
    return lambda d: d @ A.T  # (R, D) -> (R, O)


def test_a_linear_map_is_solved_exactly():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(12, 4, generator=gen)  # (O, D), full column rank
    truth = torch.randn(3, 4, generator=gen)
    fit = rc.fit(_linear(A), truth @ A.T, dim=4, iters=8)
    assert torch.allclose(fit.delta, truth, atol=1e-3)
    assert torch.all(fit.r2 > 1 - 1e-6)
    assert torch.equal(fit.history[0], torch.zeros(3))  # delta = 0 explains nothing
    assert torch.allclose(fit.change, truth @ A.T, atol=1e-3)


def test_an_unreachable_part_is_left_over_as_one_minus_r2():
    A = torch.eye(4)[:, :2]  # (O=4, D=2): only the first two coordinates are reachable
    target = torch.tensor([[1.0, 2.0, 2.0, 0.0]])  # |target|^2 = 9, unreachable part 4
    fit = rc.fit(_linear(A), target, dim=2, iters=4)
    assert fit.r2.item() == pytest.approx(5 / 9, abs=1e-5)


def test_a_row_fits_the_same_whatever_else_is_in_its_batch():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(6, 3, generator=gen)

    def f(d):  # nonlinear, row-wise
        return torch.tanh(d @ W.T) + 0.1 * (d @ W.T) ** 2

    target = torch.randn(5, 6, generator=gen)
    together = rc.fit(f, target, dim=3, iters=5)
    alone = rc.fit(f, target[2:3], dim=3, iters=5)
    chunked = rc.fit_chunks(lambda rows: f, target, dim=3, iters=5, chunk=2)
    assert torch.allclose(together.r2[2:3], alone.r2, atol=1e-6)
    # the finite-difference step (1e-3) amplifies another batch size's GEMM rounding (~1e-7) about a thousandfold
    assert torch.allclose(together.delta, chunked.delta, atol=1e-3)
    assert torch.all(together.r2 >= together.history.max(0).values - 1e-7)  # the best iterate is kept


def test_a_zero_target_is_refused_naming_the_row():
    with pytest.raises(InputError, match="target row 1 is zero"):
        rc.fit(_linear(torch.eye(2)), torch.tensor([[1.0, 0.0], [0.0, 0.0]]), dim=2, iters=1)


def test_block_groups_split_the_depth_into_thirds():
    assert rc.block_groups(5) == {"early": [0, 1], "middle": [2, 3], "late": [4]}
    assert [len(g) for g in rc.block_groups(28).values()] == [10, 9, 9]
    assert rc.block_groups(2) == {"early": [0], "late": [1]}
    with pytest.raises(InputError, match="1 block has no block groups"):
        rc.block_groups(1)


def test_masks_and_the_masked_modulation():
    m = rc.masks(3, 2, [1])
    assert m.tolist() == [[0, 1, 0, 0]] * 2
    assert torch.equal(rc.masks(3, 1), torch.ones(1, 4))  # every block and the final layer
    delta = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mod = rc.masked_modulation(delta, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert mod.blocks[0].tolist() == [[1, 2], [0, 0]] and mod.blocks[1].tolist() == [[0, 0], [3, 4]]
    assert mod.final.tolist() == [[1, 2], [0, 0]]


def _per_prompt(stat, null, other):
    return {(name, s): v for s in (0.2, 0.8) for name, v in (("quality", stat), ("neutral", null),
                                                            ("permuted", other))}


def test_a_planted_difference_is_found_and_none_where_there_is_none():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.4, 12)
    out = rc.null_tests(_per_prompt(base + 0.3, base, base), (0.2, 0.8), n_boot=500, seed=0)
    assert out["vs_neutral/diff"] == pytest.approx(0.3)
    assert out["vs_neutral/p"] == pytest.approx(1 / 2**12)  # only the identity reaches the observed difference
    assert out["vs_neutral/diff_ci_low"] > 0 and out["vs_neutral/p_holm"] == pytest.approx(2 / 2**12)
    none = rc.null_tests(_per_prompt(base, base, base + rng.normal(0, 0.01, 12)), (0.2, 0.8), n_boot=500, seed=0)
    assert none["vs_neutral/diff"] == 0 and none["vs_neutral/p"] == 1.0
    assert none["vs_permuted/p"] > 0.05 and none["quality/r2"] == pytest.approx(base.mean())
