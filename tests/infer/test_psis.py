"""The batched Pareto k-hat against ArviZ's own loop over datapoints (its oracle)."""

import numpy as np
import pytest
import torch

from pyro_vae import arviz_compat
from pyro_vae.infer import psis
from pyro_vae.infer.estimator import psis_khat


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    odd = normal(200, 8)
    odd[:, 0] = 0.0  # equal weights: no tail
    odd[5, 1] = -float("inf")  # a zero weight
    odd[:3, 2] = float("nan")
    odd[:, 3] = torch.round(odd[:, 3])  # ties everywhere, the tail's edge included
    odd[:150, 4] = odd[150, 4]  # most weights equal, a few above
    odd[:, 5] = odd[:, 5] * 800  # weights far below float64's tiny relative to the largest
    odd[:, 6] = -float("inf")
    odd[0, 6] = 1.0  # one non-zero weight
    return {
        "light": normal(1000, 50) * 0.1,
        "from light to heavy": normal(1000, 300) * torch.linspace(0.1, 5, 300).double(),
        "student-t log weights": torch.distributions.StudentT(
            torch.linspace(0.5, 10, 100).double()
        ).sample((500,)),
        "21 draws (the fewest)": normal(21, 50),
        "5000 draws": normal(5000, 20) * 2,
        "float32": (normal(1000, 50) * 2).float(),
        "odd rows": odd,
    }


@pytest.mark.parametrize("name", list(_weights(0)))
def test_batched_khat_is_arviz_khat(name):
    torch.manual_seed(1)
    lw = _weights(0)[name]
    expected = torch.from_numpy(arviz_compat.psis_khat(lw.double().T.numpy()))
    got = psis_khat(lw)
    assert got.dtype == torch.float64 and got.shape == (lw.shape[1],)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_heavy_tails_give_large_khat_and_light_ones_small():
    lw = _weights(0)["from light to heavy"]
    k = psis_khat(lw)
    assert (k[:30] < 0.5).all() and (k[-30:] > 0.7).all()


def test_tail_length_is_psis_rule():
    assert psis.tail_length(1000) == 95  # 3 sqrt(1000) = 94.9, below 1000 / 5
    assert psis.tail_length(100) == 20  # 100 / 5 = 20, below 3 sqrt(100) = 30
    with pytest.raises(ValueError, match="too short"):
        psis.pareto_khat(torch.zeros(20, 3))


def test_rows_are_batched_in_pieces_and_still_agree(monkeypatch):
    monkeypatch.setattr(psis, "_BUDGET", 1)  # one datapoint per batch
    lw = _weights(3)["from light to heavy"][:, :7]
    expected = arviz_compat.psis_khat(lw.T.numpy())
    np.testing.assert_allclose(psis_khat(lw).numpy(), expected, rtol=1e-12)
