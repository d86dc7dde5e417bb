"""Refined proposals against analytic targets whose normalisers are known exactly."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from pyro_vae.errors import NonFiniteEstimate
from pyro_vae.infer.refine import (
    DefensiveMixture,
    GaussianProposal,
    RefineResult,
    proposal_log_likelihood,
    refine_gaussian,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: a second thread only adds OpenMP synchronisation, which made the
    file ten times slower on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_tril(n, d, *, scale=1.0, correlation=0.8, dtype=F64):
    """Cholesky factors of random correlated covariances (n, d, d), positive diagonal."""
    a = torch.randn(n, d, d, dtype=dtype)
    cov = correlation * a @ a.transpose(-1, -2) / d + (1 - correlation) * torch.eye(d, dtype=dtype)
    return scale * torch.linalg.cholesky(cov)


class GaussianTarget:
    """log_target(u, rows) = log c_n + log N(u; m_n, S_n): log Z_n = log c_n exactly. Scored with
    torch's MultivariateNormal, independently of the module's own Gaussian density."""

    def __init__(self, loc, scale_tril, log_c):
        self.loc, self.scale_tril, self.log_c = loc, scale_tril, log_c

    def __call__(self, u, rows=None):
        idx = slice(None) if rows is None else rows
        dist = MultivariateNormal(self.loc[idx], scale_tril=self.scale_tril[idx])
        return self.log_c[idx] + dist.log_prob(u)


class BananaTarget:
    """A twisted Gaussian (Haario et al. 1999) shifted and scaled per datapoint: with
    z1 ~ N(0, 1), z2 | z1 ~ N(b (z1^2 - 1), 1) and u = m_n + s * z, the log-density is
    log c_n + log N(z1) + log N(z2 - b (z1^2 - 1)) - 2 log s (unit Jacobian of the twist), so
    log Z_n = log c_n exactly."""

    def __init__(self, loc, log_c, *, scale=0.5, b=0.6):
        self.loc, self.log_c, self.scale, self.b = loc, log_c, scale, b

    def __call__(self, u, rows=None):
        idx = slice(None) if rows is None else rows
        z = (u - self.loc[idx]) / self.scale
        z1, z2 = z[..., 0], z[..., 1]
        std = Normal(torch.zeros((), dtype=u.dtype), 1.0)
        lp = std.log_prob(z1) + std.log_prob(z2 - self.b * (z1 * z1 - 1.0))
        return self.log_c[idx] + lp - 2 * math.log(self.scale)


class RotatedBananas:
    """D/2 twisted pairs (as :class:`BananaTarget`, unnormalised c = 1), rotated and scaled per
    datapoint: u = m_n + A_n z with A_n lower-triangular, so log Z_n = 0."""

    def __init__(self, loc, scale_tril, *, b=0.5):
        self.loc, self.scale_tril, self.b = loc, scale_tril, b

    def __call__(self, u, rows=None):
        idx = slice(None) if rows is None else rows
        a = self.scale_tril[idx]
        diff = (u - self.loc[idx]).permute(1, 2, 0)
        z = torch.linalg.solve_triangular(a, diff, upper=False).permute(2, 0, 1)
        z1, z2 = z[..., 0::2], z[..., 1::2]
        lp = -0.5 * z1**2 - 0.5 * (z2 - self.b * (z1**2 - 1)) ** 2 - math.log(2 * math.pi)
        return lp.sum(-1) - a.diagonal(dim1=-2, dim2=-1).log().sum(-1)


class StandardNormalProposal:
    """A prior-like proposal the caller would supply: N(0, I) for every datapoint."""

    def __init__(self, n, d, dtype=F64):
        self.n, self.d, self.dtype = n, d, dtype

    def sample(self, k):
        return torch.randn(k, self.n, self.d, dtype=self.dtype)

    def log_prob(self, u):
        return Normal(torch.zeros((), dtype=u.dtype), 1.0).log_prob(u).sum(-1)


def gaussian_problem(n=4, d=4):
    loc = 3.0 * torch.randn(n, d, dtype=F64)
    tril = random_tril(n, d, scale=0.7)
    log_c = torch.randn(n, dtype=F64)
    return GaussianTarget(loc, tril, log_c)


# ---------------------------------------------------------------- GaussianProposal


def test_log_prob_matches_torch_multivariate_normal():
    loc, tril = torch.randn(4, 3, dtype=F64), random_tril(4, 3)
    proposal = GaussianProposal(loc, tril)
    u = 2.0 * torch.randn(6, 4, 3, dtype=F64)
    expected = MultivariateNormal(loc, scale_tril=tril).log_prob(u)
    assert proposal.log_prob(u).shape == (6, 4)
    torch.testing.assert_close(proposal.log_prob(u), expected, rtol=0, atol=1e-12)
    # float32 parameters and draws stay float32, with the same value
    p32 = GaussianProposal(loc.float(), tril.float())
    lp32 = p32.log_prob(u.float())
    assert lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), expected, rtol=1e-6, atol=1e-5)


def test_sample_matches_moments_and_is_reparameterised():
    loc = torch.randn(3, 3, dtype=F64, requires_grad=True)
    tril = random_tril(3, 3).requires_grad_()
    proposal = GaussianProposal(loc, tril)
    k = 20000
    u = proposal.sample(k)
    assert u.shape == (k, 3, 3) and u.dtype == F64
    centred = (u - u.mean(0)).detach()
    cov = torch.einsum("kni,knj->nij", centred, centred) / (k - 1)
    sd = proposal.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().detach()
    assert ((u.mean(0) - loc).abs() / sd < 4.5 / math.sqrt(k)).all()
    torch.testing.assert_close(cov, proposal.covariance_matrix.detach(), rtol=0, atol=0.06)
    # the draws are loc + L eps: d sum(u) / d loc = k, d sum(u) / d L_ij = sum_k eps_kj
    grad_loc, grad_tril = torch.autograd.grad(u.sum(), (loc, tril))
    torch.testing.assert_close(grad_loc, torch.full_like(loc, float(k)))
    with torch.no_grad():
        eps_sum = torch.linalg.solve_triangular(
            tril, (u.sum(0) - k * loc).unsqueeze(-1), upper=False
        ).squeeze(-1)
    torch.testing.assert_close(grad_tril, eps_sum.unsqueeze(1).expand(3, 3, 3))


def test_widened_multiplies_the_scale():
    loc, tril = torch.randn(2, 3, dtype=F64), random_tril(2, 3)
    wide = GaussianProposal(loc, tril).widened(2.5)
    u = torch.randn(5, 2, 3, dtype=F64)
    expected = MultivariateNormal(loc, scale_tril=2.5 * tril).log_prob(u)
    torch.testing.assert_close(wide.log_prob(u), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        GaussianProposal(loc, tril).widened(0.0)


def test_invalid_parameters_and_points_are_refused():
    loc, tril = torch.zeros(2, 3, dtype=F64), random_tril(2, 3)
    with pytest.raises(ValueError, match="positive"):
        GaussianProposal(loc, tril * torch.tensor([1.0, -1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="lower-triangular"):
        GaussianProposal(loc, tril + torch.triu(torch.ones(3, 3, dtype=F64), 1))
    with pytest.raises(ValueError, match="shape"):
        GaussianProposal(loc, tril[:1])
    with pytest.raises(ValueError, match="shape"):
        GaussianProposal(loc, tril).log_prob(torch.zeros(4, 3, 3, dtype=F64))


# ---------------------------------------------------------------- from_samples


def test_from_samples_recovers_mean_and_covariance():
    n, d, s = 3, 4, 40000
    truth = GaussianProposal(torch.randn(n, d, dtype=F64), random_tril(n, d))
    u = truth.sample(s)
    fitted = GaussianProposal.from_samples(u)
    torch.testing.assert_close(fitted.loc, truth.loc, rtol=0, atol=0.03)
    torch.testing.assert_close(fitted.covariance_matrix, truth.covariance_matrix, rtol=0, atol=0.04)
    # shrinkage 0 is the sample covariance; lambda keeps the variances, scales covariances
    sample_cov = torch.stack([torch.cov(u[:, i].T) for i in range(n)])
    plain = GaussianProposal.from_samples(u, shrinkage=0.0)
    torch.testing.assert_close(plain.covariance_matrix, sample_cov, rtol=1e-10, atol=1e-12)
    shrunk = GaussianProposal.from_samples(u, shrinkage=0.3).covariance_matrix
    eye = torch.eye(d, dtype=F64)
    torch.testing.assert_close(shrunk * eye, sample_cov * eye, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(
        shrunk * (1 - eye), 0.7 * sample_cov * (1 - eye), rtol=1e-10, atol=1e-12
    )


def test_from_samples_automatic_shrinkage_is_schafer_strimmer():
    """The estimated lambda against a direct (S, N, D, D) evaluation of the formula."""
    s, n, d = 12, 3, 4
    u = (random_tril(n, d) @ torch.randn(n, d, s, dtype=F64)).permute(2, 0, 1)
    centred = u - u.mean(0)
    sd = centred.pow(2).sum(0).div(s - 1).sqrt()
    y = centred / sd
    w = y.unsqueeze(-1) * y.unsqueeze(-2)  # (S, N, D, D)
    w_bar = w.mean(0)
    var_r = s / (s - 1) ** 3 * ((w - w_bar) ** 2).sum(0)
    r = s / (s - 1) * w_bar
    off = 1 - torch.eye(d, dtype=F64)
    lam = ((var_r * off).sum((-1, -2)) / (r * r * off).sum((-1, -2))).clamp(0.01, 1.0)
    sample_cov = torch.stack([torch.cov(u[:, i].T) for i in range(n)])
    expected = sample_cov * (1 - lam[:, None, None] * off)
    fitted = GaussianProposal.from_samples(u).covariance_matrix
    torch.testing.assert_close(fitted, expected, rtol=1e-10, atol=1e-12)
    assert (lam > 0.01).all() and (lam < 1).all()  # the formula, not a clamp, decided


@pytest.mark.parametrize("num_draws", [2, 5, 10], ids=["S=2", "S=5", "S=D"])
def test_from_samples_is_positive_definite_with_few_draws(num_draws):
    d = 10
    u = torch.randn(num_draws, 3, d, dtype=F64) @ random_tril(1, d)[0].T
    fitted = GaussianProposal.from_samples(u)
    assert (torch.linalg.eigvalsh(fitted.covariance_matrix) > 0).all()
    assert torch.isfinite(fitted.log_prob(torch.randn(4, 3, d, dtype=F64))).all()
    with pytest.raises(ValueError, match="positive definite"):
        GaussianProposal.from_samples(u, shrinkage=0.0)


# ---------------------------------------------------------------- DefensiveMixture


def test_mixture_log_prob_is_the_exact_mixture_density():
    loc, tril = torch.randn(3, 2, dtype=F64), random_tril(3, 2, scale=0.5)
    base = GaussianProposal(loc, tril)
    mix = DefensiveMixture(base, base.widened(3.0), weight=0.3)
    u = torch.randn(7, 3, 2, dtype=F64)
    direct = torch.log(
        0.7 * MultivariateNormal(loc, scale_tril=tril).log_prob(u).exp()
        + 0.3 * MultivariateNormal(loc, scale_tril=3.0 * tril).log_prob(u).exp()
    )
    torch.testing.assert_close(mix.log_prob(u), direct, rtol=0, atol=1e-12)
    # in one dimension it integrates to 1 (midpoint rule on a wide, fine grid)
    one_d = GaussianProposal(
        torch.tensor([[0.5], [-1.0]], dtype=F64), torch.ones(2, 1, 1, dtype=F64)
    )
    mix_1d = DefensiveMixture(one_d, one_d.widened(4.0), weight=0.2)
    grid = torch.linspace(-40, 40, 40001, dtype=F64)
    dx = grid[1] - grid[0]
    points = grid[:, None, None].expand(-1, 2, 1)
    mass = mix_1d.log_prob(points).exp().sum(0) * dx
    torch.testing.assert_close(mass, torch.ones(2, dtype=F64), rtol=0, atol=1e-8)


def test_mixture_samples_follow_its_density():
    """Component frequencies and the 1-d CDF of the draws against the analytic mixture."""
    torch.manual_seed(1)
    k, w = 20000, 0.3
    base = GaussianProposal(
        torch.full((2, 1), -3.0, dtype=F64), torch.full((2, 1, 1), 0.5, dtype=F64)
    )
    wide = GaussianProposal(
        torch.full((2, 1), 2.0, dtype=F64), torch.full((2, 1, 1), 2.0, dtype=F64)
    )
    u = DefensiveMixture(base, wide, weight=w).sample(k)
    assert u.shape == (k, 2, 1)
    tol = 5 * math.sqrt(0.25 / k)
    for x in (-4.0, -3.0, -1.5, 0.0, 2.0, 4.0):
        cdf = (1 - w) * Normal(-3.0, 0.5).cdf(torch.tensor(x)) + w * Normal(2.0, 2.0).cdf(
            torch.tensor(x)
        )
        empirical = (u[..., 0] <= x).double().mean(0)
        assert ((empirical - cdf).abs() < tol).all(), (x, empirical, cdf)
    # the component is drawn for every draw of every datapoint on its own
    far_base = GaussianProposal(
        torch.full((2, 1), -10.0, dtype=F64), torch.ones(2, 1, 1, dtype=F64)
    )
    far_wide = GaussianProposal(torch.full((2, 1), 10.0, dtype=F64), torch.ones(2, 1, 1, dtype=F64))
    is_wide = DefensiveMixture(far_base, far_wide, weight=w).sample(k)[..., 0] > 0
    assert (is_wide.double().mean(0) - w).abs().max() < tol
    differ = (is_wide[:, 0] != is_wide[:, 1]).double().mean()
    assert abs(differ - 2 * w * (1 - w)) < tol


def test_mixture_with_a_caller_supplied_prior():
    base = GaussianProposal(torch.randn(3, 2, dtype=F64), random_tril(3, 2, scale=0.3))
    prior = StandardNormalProposal(3, 2)
    mix = DefensiveMixture(base, prior, weight=0.1)
    u = mix.sample(50)
    assert u.shape == (50, 3, 2)
    direct = torch.logaddexp(math.log(0.9) + base.log_prob(u), math.log(0.1) + prior.log_prob(u))
    torch.testing.assert_close(mix.log_prob(u), direct, rtol=0, atol=1e-12)
    torch.testing.assert_close(DefensiveMixture(base, prior, 0.0).log_prob(u), base.log_prob(u))
    torch.testing.assert_close(DefensiveMixture(base, prior, 1.0).log_prob(u), prior.log_prob(u))
    with pytest.raises(ValueError, match="weight"):
        DefensiveMixture(base, prior, weight=1.5)


# ---------------------------------------------------------------- refine_gaussian


def test_refine_recovers_a_correlated_gaussian_target():
    """From a badly placed, isotropic start the proposal becomes the target itself: the
    importance estimate is then exact with every weight equal (ESS = K)."""
    torch.manual_seed(2)
    n, d = 4, 4
    target = gaussian_problem(n, d)
    offsets = torch.tensor([0.2, 0.8, 1.5, 2.5], dtype=F64)[:, None]  # finish at different steps
    init = GaussianProposal(target.loc + offsets, torch.eye(d, dtype=F64).expand(n, d, d) * 0.3)
    result = refine_gaussian(target, init)
    assert isinstance(result, RefineResult)
    assert result.converged.all() and (result.steps < 1000).all()
    assert len(set(result.steps.tolist())) > 1  # frozen at different steps: rows were subset
    cov = target.scale_tril @ target.scale_tril.transpose(-1, -2)
    sd = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    assert ((result.proposal.loc - target.loc).abs() / sd).max() < 0.02
    error = torch.linalg.matrix_norm(result.proposal.covariance_matrix - cov)
    assert (error / torch.linalg.matrix_norm(cov)).max() < 0.05
    assert (result.objective > result.initial_objective + 1.0).all()
    assert (result.objective - target.log_c).abs().max() < 5e-3
    k = 2000
    estimate = proposal_log_likelihood(target, result.proposal, k)
    assert (estimate.log_px - target.log_c).abs().max() < 1e-3
    assert (estimate.ess > 0.99 * k).all()


def test_refine_in_float32():
    """The dtype a VAE runs in: parameters stay float32, the estimate is still near exact."""
    torch.manual_seed(11)
    n, d, k = 3, 5, 1000
    exact = gaussian_problem(n, d)
    target = GaussianTarget(exact.loc.float(), exact.scale_tril.float(), exact.log_c.float())
    init = GaussianProposal(target.loc + 0.5, 0.3 * torch.eye(d).expand(n, d, d))
    result = refine_gaussian(target, init)
    assert result.proposal.loc.dtype == torch.float32
    assert result.objective.dtype == torch.float32
    estimate = proposal_log_likelihood(target, result.proposal, k)
    assert (estimate.log_px - exact.log_c).abs().max() < 0.01
    assert (estimate.ess > 0.9 * k).all()


def test_refine_stays_well_conditioned_in_50_dimensions():
    """At D = 50, steps of the full size on every entry of the Cholesky factor make it
    ill-conditioned within a few windows (the objective then collapses); scaled off-diagonal
    steps keep it near the best Gaussian's objective (about -4.8 here)."""
    torch.manual_seed(12)
    n, d = 3, 50
    a = random_tril(n, d, scale=0.3)
    target = RotatedBananas(torch.randn(n, d, dtype=F64), a)
    sd = (a @ a.transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sqrt()
    init = GaussianProposal(target.loc + 0.5 * sd * torch.randn(n, d, dtype=F64), sd.diag_embed())
    result = refine_gaussian(target, init, max_steps=200)
    relative = result.proposal.scale_tril @ torch.linalg.inv(init.scale_tril)  # B = L0^-1 L
    singular = torch.linalg.svdvals(relative)
    assert (singular.max(-1).values / singular.min(-1).values).max() < 20
    assert (result.initial_objective < -40).all() and (result.objective > -6).all()


def test_refine_with_the_iwae_objective_raises_the_bound():
    """The IWAE bound's optimum is the target too, but it is flat near it (its gap is about
    KL / S): from a start whose weights degenerate, the estimate comes near log Z."""
    torch.manual_seed(3)
    n, d, k = 4, 4, 2000
    target = gaussian_problem(n, d)
    offsets = torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=F64)[:, None]
    init = GaussianProposal(target.loc + offsets, torch.eye(d, dtype=F64).expand(n, d, d) * 0.3)
    result = refine_gaussian(target, init, objective="iwae")
    assert (result.objective > result.initial_objective).all()
    start = proposal_log_likelihood(target, init, k)
    refined = proposal_log_likelihood(target, result.proposal, k)
    assert (refined.log_px - target.log_c).abs().max() < 0.05
    assert (refined.ess > 0.25 * k).all() and (start.ess < 0.05 * k).all()


def test_refined_estimates_stay_below_log_z_and_beat_the_start():
    """On a non-Gaussian (banana) target no Gaussian is exact: averaged over datapoints, L_K of
    the refined proposal (alone, or in a defensive mixture) lies below log Z within its error,
    and well above L_K of the start."""
    torch.manual_seed(3)
    n = 40
    target = BananaTarget(torch.randn(n, 2, dtype=F64), torch.randn(n, dtype=F64))
    init = GaussianProposal(
        target.loc + 0.8 * torch.randn(n, 2, dtype=F64),
        torch.eye(2, dtype=F64).expand(n, 2, 2) * 0.2,
    )
    result = refine_gaussian(target, init)
    assert (result.objective > result.initial_objective).all()
    k = 1000
    mixture = DefensiveMixture(result.proposal, result.proposal.widened(2.0), weight=0.1)
    gaps = {}
    for name, proposal in (("start", init), ("refined", result.proposal), ("mixture", mixture)):
        estimate = proposal_log_likelihood(target, proposal, k)
        gaps[name] = estimate.log_px - target.log_c
    for name in ("refined", "mixture"):
        mean, se = gaps[name].mean().item(), gaps[name].std().item() / math.sqrt(n)
        assert mean < 3 * se, f"{name}: L_K - log Z = {mean} +- {se}, above 0"
        assert mean > -0.1, f"{name}: L_K - log Z = {mean}, far below 0"
    assert gaps["refined"].mean() > gaps["start"].mean() + 0.5, gaps
    assert (gaps["refined"] > gaps["start"]).float().mean() > 0.9


def test_early_stopping_stops_and_freezes_per_datapoint():
    """A point started at the optimum stops after ``patience`` windows without improvement and is
    no longer evaluated; a point far away keeps going. The frozen point's result is what it was
    when it froze, whatever the others do afterwards."""
    torch.manual_seed(4)
    n, d, check_every, patience = 3, 3, 20, 2
    target = gaussian_problem(n, d)
    loc = target.loc + torch.tensor([0.0, 0.1, 3.0], dtype=F64)[:, None]
    tril = torch.stack([target.scale_tril[0], target.scale_tril[1], 0.2 * torch.eye(d, dtype=F64)])
    init = GaussianProposal(loc, tril)
    calls = []

    def recording(u, rows=None):
        calls.append(None if rows is None else rows.tolist())
        return target(u, rows)

    kwargs = dict(check_every=check_every, patience=patience, min_improvement=0.05)
    torch.manual_seed(5)
    result = refine_gaussian(recording, init, **kwargs)
    steps = result.steps.tolist()
    # at the optimum every log weight is log c: window means never rise after the first window
    assert steps[0] == check_every * (patience + 1)
    assert steps[0] <= steps[1] < steps[2]
    assert result.converged.all()
    torch.testing.assert_close(result.objective[0], target.log_c[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(result.initial_objective[0], target.log_c[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(result.proposal.loc[0], target.loc[0], rtol=0, atol=1e-6)
    # every datapoint is evaluated exactly while active, then never again
    assert len(calls) == max(steps)
    for step, rows in enumerate(calls):
        active = [i for i in range(n) if steps[i] > step]
        assert (rows is None and active == list(range(n))) or rows == active, (step, rows)
    # a run stopped where point 1 froze gives point 1 the same result, bit for bit
    torch.manual_seed(5)
    short = refine_gaussian(target, init, max_steps=steps[1], **kwargs)
    assert short.steps[1] == steps[1]
    assert torch.equal(short.proposal.loc[:2], result.proposal.loc[:2])
    assert torch.equal(short.proposal.scale_tril[:2], result.proposal.scale_tril[:2])
    assert torch.equal(short.objective[:2], result.objective[:2])


def test_refine_keeps_the_best_window():
    """Runs cut after 1, 2, ... windows (the same draws up to the cut): the result's objective
    never falls as windows are added, and it changes only where a window beat the best."""
    n = 5
    target = BananaTarget(torch.randn(n, 2, dtype=F64), torch.randn(n, dtype=F64))
    init = GaussianProposal(target.loc, torch.eye(2, dtype=F64).expand(n, 2, 2) * 0.4)
    kwargs = dict(lr=0.3, lr_decay=1.0, check_every=10, patience=100)
    runs = []
    for windows in range(1, 7):
        torch.manual_seed(9)
        runs.append(refine_gaussian(target, init, max_steps=10 * windows, **kwargs))
    kept = 0
    for before, after in zip(runs, runs[1:], strict=False):
        assert (after.objective >= before.objective).all()
        same = after.objective == before.objective
        kept += int(same.sum())
        assert torch.equal(after.proposal.loc[same], before.proposal.loc[same])
        assert torch.equal(after.proposal.scale_tril[same], before.proposal.scale_tril[same])
    assert kept > 0, "every window improved: the test checks nothing"


def test_window_average_scores_at_least_the_window_mean():
    """Adam's normalised steps jitter around the optimum (here a large constant step size); the
    best window's average parameters are returned, and their ELBO (estimated from many fresh
    draws) is at least the window's mean objective, itself biased up by the selection."""
    torch.manual_seed(10)
    n = 20
    target = BananaTarget(torch.randn(n, 2, dtype=F64), torch.randn(n, dtype=F64))
    init = GaussianProposal(
        target.loc + 0.3 * torch.randn(n, 2, dtype=F64),
        torch.eye(2, dtype=F64).expand(n, 2, 2) * 0.3,
    )
    result = refine_gaussian(
        target, init, lr=0.3, lr_decay=1.0, max_steps=400, check_every=100, patience=100
    )
    elbo = proposal_log_likelihood(target, result.proposal, 20000).elbo
    assert (elbo - result.objective).mean() > 0.01  # the last iterates score about 0.0


def test_rows_subsetting_gives_the_same_result_as_full_evaluation():
    """A target scored on the active rows only and one that scores every datapoint (inactive ones
    at a dummy point) and keeps the active rows give the same refinement."""
    torch.manual_seed(6)
    n, d = 4, 3
    target = gaussian_problem(n, d)
    init = GaussianProposal(
        target.loc + torch.tensor([0.0, 0.3, 1.0, 2.0], dtype=F64)[:, None],
        0.5 * torch.eye(d, dtype=F64).expand(n, d, d),
    )
    subsets = []

    def full(u, rows=None):
        if rows is None:
            return target(u)
        subsets.append(rows)
        everything = target.loc.expand(u.shape[0], n, d).clone()
        everything[:, rows] = u
        return target(everything)[:, rows]

    kwargs = dict(check_every=25, patience=2, max_steps=400)
    torch.manual_seed(7)
    a = refine_gaussian(target, init, **kwargs)
    torch.manual_seed(7)
    b = refine_gaussian(full, init, **kwargs)
    assert subsets, "no datapoint froze before the others: the test checks nothing"
    assert torch.equal(a.steps, b.steps)
    torch.testing.assert_close(a.proposal.loc, b.proposal.loc, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.proposal.scale_tril, b.proposal.scale_tril, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.objective, b.objective, rtol=0, atol=1e-12)


def test_refine_refuses_bad_arguments():
    target = gaussian_problem(2, 2)
    init = GaussianProposal(target.loc, target.scale_tril)
    with pytest.raises(ValueError, match="objective"):
        refine_gaussian(target, init, objective="kl")
    with pytest.raises(ValueError, match="num_particles"):
        refine_gaussian(target, init, num_particles=0)
    with pytest.raises(ValueError, match="shape"):
        refine_gaussian(lambda u, rows=None: target(u, rows).sum(0), init)


# ---------------------------------------------------------------- proposal_log_likelihood


@pytest.mark.parametrize("chunk_size", [1, 7, 60, None], ids=["1", "7", "60", "auto"])
def test_proposal_log_likelihood_equals_a_direct_computation(chunk_size):
    """For a fixed seed, the streamed estimate equals log-sum-exp over the same draws."""
    n, k = 3, 60
    target = BananaTarget(torch.randn(n, 2, dtype=F64), torch.randn(n, dtype=F64))
    proposal = GaussianProposal(target.loc, 0.6 * random_tril(n, 2))
    torch.manual_seed(8)
    result = proposal_log_likelihood(
        target, proposal, k, chunk_size=chunk_size, keep_log_weights=True
    )
    torch.manual_seed(8)
    size = k if chunk_size is None else chunk_size  # auto: all 60 draws of 3 points in a pass
    draws = [proposal.sample(min(size, k - first)) for first in range(0, k, size)]
    lw = torch.cat([target(u) - proposal.log_prob(u) for u in draws])
    log_px = torch.logsumexp(lw, 0) - math.log(k)
    ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
    torch.testing.assert_close(result.log_weights, lw, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.log_px, log_px, rtol=0, atol=1e-10)
    torch.testing.assert_close(result.elbo, lw.mean(0), rtol=0, atol=1e-10)
    torch.testing.assert_close(result.ess, ess, rtol=1e-9, atol=0)
    assert result.num_samples == k


def test_proposal_log_likelihood_raises_on_nan_weights():
    target = gaussian_problem(3, 2)
    proposal = GaussianProposal(target.loc, target.scale_tril)

    def broken(u, rows=None):
        out = target(u, rows)
        out[:, 1] = math.nan
        return out

    with pytest.raises(NonFiniteEstimate) as info:
        proposal_log_likelihood(broken, proposal, 10)
    assert info.value.datapoints == [1]
