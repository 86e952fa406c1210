"""Pooling: hand-computed answers, the zero-floor of padded max, mask handling and shapes."""

from __future__ import annotations

import pytest
import torch

from anima_probe.probes.pooling import STRATEGIES, last_token_index, pool, pool_all, pool_named


def _toy() -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, L = 4, D = 2; row 0 has 2 real tokens, row 1 has 3; pad rows are zero like Anima's."""
    x = torch.tensor(
        [
            [[-1.0, 2.0], [-3.0, 4.0], [0.0, 0.0], [0.0, 0.0]],
            [[1.0, -1.0], [5.0, -2.0], [-6.0, -3.0], [0.0, 0.0]],
        ]
    )  # (2, 4, 2)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])  # (2, 4)
    return x, mask


def test_known_answers_for_every_strategy():
    x, mask = _toy()
    expected = {
        "max_padded": [[0.0, 4.0], [5.0, 0.0]],  # pads lift negative maxima to 0
        "max_tokens": [[-1.0, 4.0], [5.0, -1.0]],
        "mean_padded": [[-1.0, 1.5], [0.0, -1.5]],  # sums divided by L = 4
        "mean_tokens": [[-2.0, 3.0], [0.0, -2.0]],  # sums divided by 2 and 3
        "eos": [[-3.0, 4.0], [-6.0, -3.0]],
    }
    got = pool_all(x, mask)
    assert set(got) == set(STRATEGIES) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(got[name], torch.tensor(want), msg=name)


def test_padded_max_is_floored_at_zero_and_tokens_max_is_not():
    torch.manual_seed(1)
    x = -torch.rand(3, 16, 8) - 0.1  # (3, 16, 8), strictly negative real tokens
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[:, :5] = True
    x[~mask] = 0.0  # zero padding, as in crossattn_emb
    padded = pool(x, mask, "max", "padded")  # (3, 8)
    tokens = pool(x, mask, "max", "tokens")  # (3, 8)
    assert torch.all(padded == 0.0)
    assert torch.all(tokens < 0.0)
    # With no pad rows the two variants agree.
    full = torch.ones(3, 16, dtype=torch.bool)
    torch.testing.assert_close(pool(x, full, "max", "padded"), pool(x, full, "max", "tokens"))


def test_tokens_variants_ignore_padding_content():
    x, mask = _toy()
    garbage = x.clone()
    garbage[~mask] = 100.0  # non-zero pads must not leak into masked pooling
    for name in ("max_tokens", "mean_tokens", "eos"):
        torch.testing.assert_close(pool_named(garbage, mask, name), pool_named(x, mask, name), msg=name)
    assert not torch.equal(pool_named(garbage, mask, "max_padded"), pool_named(x, mask, "max_padded"))


def test_eos_padded_is_the_last_real_token_and_matches_sum_minus_one():
    x, mask = _toy()
    torch.testing.assert_close(pool(x, mask, "eos", "padded"), pool(x, mask, "eos", "tokens"))
    assert last_token_index(mask).tolist() == (mask.sum(1) - 1).tolist() == [1, 2]
    holes = torch.tensor([[True, False, True, False]])
    assert last_token_index(holes).tolist() == [2]


def test_shapes_and_dtype_are_kept():
    x = torch.randn(4, 512, 1024, dtype=torch.bfloat16)  # (B, L, D) like crossattn_emb
    mask = torch.zeros(4, 512, dtype=torch.bool)
    mask[:, :7] = True
    for name, out in pool_all(x, mask).items():
        assert out.shape == (4, 1024), name
        assert out.dtype == torch.bfloat16, name


def test_empty_mask_row_is_named():
    x, mask = _toy()
    mask[1] = False
    with pytest.raises(ValueError, match="mask row 1 has no real tokens"):
        pool(x, mask, "mean", "tokens")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "median"}, "unknown pooling strategy 'median'"),
        ({"strategy": "max", "over": "all"}, "unknown pooling domain"),
    ],
)
def test_bad_arguments(kwargs, message):
    x, mask = _toy()
    with pytest.raises(ValueError, match=message):
        pool(x, mask, **kwargs)


def test_bad_shapes_and_names():
    x, mask = _toy()
    with pytest.raises(ValueError, match="mask must be a bool"):
        pool(x, mask.float(), "max")
    with pytest.raises(ValueError, match="does not match"):
        pool(x, mask[:, :3], "max")
    with pytest.raises(ValueError, match=r"must be \(B, L, D\)"):
        pool(x[0], mask, "max")
    with pytest.raises(ValueError, match="unknown pooling name 'max'"):
        pool_named(x, mask, "max")
