"""Prior and posterior predictive checks of a Pyro model/guide pair, per datapoint.

A predictive check asks whether data replicated from the fitted model look like the data
(Gelman, Meng & Stern 1996; Gabry et al. 2019; Gelman et al. 2020, "Bayesian workflow"). For each
observed image x_n and draw s, a replicate is drawn from

- the **posterior predictive**: z_sn ~ q(z | x_n), x_rep_sn ~ p(x | z_sn) (the guide stands in for
  the posterior, as everywhere in an amortised model), or
- the **prior predictive**: z_sn ~ p(z), x_rep_sn ~ p(x | z_sn),

and test statistics T are compared between the observed and the replicated images. With the S
replicates of each image forming S replicated datasets (ArviZ's ``(chain, draw, datapoint)``
layout), the Bayesian p-value of a statistic is

.. math:: p_T = \\frac{1}{S} \\sum_s 1\\left[\\bar T(x^{rep}_s) \\le \\bar T(x)\\right],
          \\qquad \\bar T(x) = \\frac{1}{N} \\sum_n T(x_n),

(ArviZ's ``plot_bpv(kind="t_stat", t_stat="mean")``), and the per-image u-value
``mean_s 1[T(x_rep_sn) <= T(x_n)]`` (its ``kind="u_value"``), both with ties counted half. A
p-value near 0 or 1 says the model's replicates differ systematically from the data in that
statistic. Under the prior predictive of a correct model the p-values and u-values are uniform;
posterior predictive p-values of a correct model concentrate around 1/2 (they use the data
twice), so an extreme one is strong evidence.

The discrepancy ``log_lik``, log p(x | z), depends on the latent as well as the data (a
"realised discrepancy", Gelman, Meng & Stern 1996): the observed image and its replicate are
scored at the same z_sn, and its p-value pairs them draw by draw. It is given for the posterior
predictive only (under the prior predictive z is unrelated to the observed image).

The programs follow the convention of the estimators: every sample site lies in one plate over the
rows of ``x`` (:func:`~pyro_vae.infer.plates.data_plate`), and the model has one observed
site, whose value has the shape of ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.infer.passes import PASS_VALUES
from pyro_vae.infer.plates import LATENT_DRAWS_PLATE, data_plate
from pyro_vae.infer.traces import (
    guess_max_plate_nesting,
    per_datapoint_log_prob,
    vectorized_traces,
)
from pyro_vae.progress import progress_bar

KINDS = ("prior", "posterior")
LOG_LIK = "log_lik"  # the realised discrepancy log p(x | z), posterior predictive only
ON_THRESHOLD = 0.5  # a pixel is "on" above this value
# Values drawn per block of rows by default: the one planner's fixed budget on a CPU, so that the
# draws (and the numbers) do not depend on the free memory of the machine
BLOCK_ELEMENTS = PASS_VALUES["cpu"]


@dataclass(frozen=True)
class Statistic:
    """A test statistic of one image: ``fn(x, image_shape)`` maps ``(..., D)`` to ``(...)``."""

    name: str
    description: str
    fn: Callable[[torch.Tensor, tuple[int, ...] | None], torch.Tensor]
    discrete: bool = False  # integer-valued (ArviZ jitters such values in its u-value plot)


def mean_intensity(x: torch.Tensor, image_shape=None) -> torch.Tensor:
    """The mean pixel value of each image."""
    return x.mean(-1)


def on_pixels(x: torch.Tensor, image_shape=None) -> torch.Tensor:
    """The number of pixels above :data:`ON_THRESHOLD`."""
    return (x > ON_THRESHOLD).sum(-1)


def total_variation(x: torch.Tensor, image_shape=None) -> torch.Tensor:
    """The mean absolute difference between neighbouring pixels (an edge energy): horizontal and
    vertical neighbours of an image of ``image_shape`` ``(H, W)`` or ``(C, H, W)``; consecutive
    coordinates of flat data (``image_shape`` None)."""
    if image_shape is None or len(image_shape) < 2:
        return (x[..., 1:] - x[..., :-1]).abs().mean(-1)
    img = x.reshape(*x.shape[:-1], *image_shape)
    dh = (img[..., 1:, :] - img[..., :-1, :]).abs().flatten(-len(image_shape))
    dw = (img[..., :, 1:] - img[..., :, :-1]).abs().flatten(-len(image_shape))
    return torch.cat([dh, dw], dim=-1).mean(-1)


STATISTICS: tuple[Statistic, ...] = (
    Statistic("mean_intensity", "mean pixel value", mean_intensity),
    Statistic("on_pixels", f"number of pixels above {ON_THRESHOLD}", on_pixels, discrete=True),
    Statistic("total_variation", "mean |difference| of neighbouring pixels", total_variation),
)
IMAGE_STATISTICS = STATISTICS  # the statistics of images (the default of predictive_check)
MAX_FEATURES = 16  # features of tabular data given statistics of their own (the first ones)


def feature_statistics(x: torch.Tensor, max_features: int = MAX_FEATURES) -> tuple[Statistic, ...]:
    """Statistics of tabular data, two per feature j of the first ``max_features`` of ``x``
    ``(N, D)``: ``value_j``, the feature itself, whose mean over the datapoints is the feature's
    mean; and ``sqdev_j``, its squared deviation :math:`(x_j - \\bar x_j)^2` from the mean
    :math:`\\bar x_j` of the observed ``x``, whose mean is the feature's variance about it (for
    replicates: their variance plus their mean's squared shift)."""
    centre = x.detach().double().mean(0).cpu()
    values, deviations = [], []
    for j in range(min(max_features, x.shape[-1])):
        m = centre[j].item()
        values.append(Statistic(f"value_{j}", f"value of feature {j}", _feature(j)))
        deviations.append(
            Statistic(
                f"sqdev_{j}", f"(feature {j} - {m:.3g})^2, about its observed mean", _sqdev(j, m)
            )
        )
    return (*values, *deviations)


def _feature(j: int):
    return lambda x, image_shape=None: x[..., j]


def _sqdev(j: int, centre: float):
    return lambda x, image_shape=None: (x[..., j] - centre) ** 2


def is_image(image_shape: tuple[int, ...] | None) -> bool:
    """Whether datapoints of ``image_shape`` are images: ``(H, W)`` or ``(C, H, W)``."""
    return image_shape is not None and len(image_shape) >= 2


def statistics_for(
    x: torch.Tensor, image_shape: tuple[int, ...] | None, max_features: int = MAX_FEATURES
) -> tuple[Statistic, ...]:
    """The statistics that suit the data: :data:`IMAGE_STATISTICS` for images
    (:func:`is_image`), :func:`feature_statistics` of ``x`` for other (tabular) data, where
    pixel intensities and neighbours mean nothing."""
    return IMAGE_STATISTICS if is_image(image_shape) else feature_statistics(x, max_features)


@dataclass(frozen=True)
class PredictiveCheck:
    """Test statistics of observed and replicated data.

    Attributes
    ----------
    kind : str
        ``"prior"`` or ``"posterior"``.
    observed : dict of str to Tensor
        Each statistic of each observed image, ``(N,)``; for ``log_lik``, log p(x_n | z_sn),
        ``(S, N)`` (the observed image at each draw's latent).
    replicated : dict of str to Tensor
        Each statistic of each replicate, ``(S, N)``.
    descriptions : dict of str to str
        What each statistic measures.
    discrete : frozenset of str
        The integer-valued statistics.
    pixel_edges, observed_pixels, replicated_pixels : Tensor
        A histogram of pixel values: bin edges ``(B + 1,)`` and the share of observed and of
        replicated pixel values in each bin ``(B,)`` (values outside the edges in the end bins).
    examples : Tensor
        The first replicate of the first images, ``(E, D)``, to look at beside them.
    """

    kind: str
    observed: dict[str, torch.Tensor]
    replicated: dict[str, torch.Tensor]
    descriptions: dict[str, str]
    discrete: frozenset[str]
    pixel_edges: torch.Tensor
    observed_pixels: torch.Tensor
    replicated_pixels: torch.Tensor
    examples: torch.Tensor

    @property
    def num_draws(self) -> int:
        return next(iter(self.replicated.values())).shape[0]

    @property
    def num_datapoints(self) -> int:
        return next(iter(self.replicated.values())).shape[1]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.replicated)

    def observed_per_image(self, name: str) -> torch.Tensor:
        """``(N,)``: the statistic of each observed image (``log_lik`` averaged over draws)."""
        obs = self.observed[name]
        return obs.mean(0) if obs.dim() == 2 else obs

    def p_value(self, name: str) -> float:
        """The Bayesian p-value of the statistic's mean over the images,
        ``mean_s 1[mean_n T(x_rep_sn) <= mean_n T(x_n)]``, ties counted half (the mid-p value:
        of mean 1/2 under the prior predictive of a correct model for an integer statistic too,
        where ArviZ's plot counts ties whole; ``log_lik``: paired by draw)."""
        rep = self.replicated[name].double().mean(1)
        obs = self.observed[name].double()
        obs = obs.mean(1) if obs.dim() == 2 else obs.mean()
        return _mid_p(rep, obs).mean().item()

    def u_values(self, name: str) -> torch.Tensor:
        """``(N,)``: per image, the share of replicates whose statistic is below the image's,
        ties counted half (the mid-p value; ``log_lik``: paired by draw). Under the prior
        predictive of a correct model they take the S + 1 values k / S, each as often, for a
        continuous statistic (see :func:`u_tail_share`)."""
        return _mid_p(self.replicated[name], self.observed[name]).mean(0)

    def extreme(self, alpha: float = 0.01) -> dict[str, float]:
        """The statistics whose p-value lies outside ``[alpha / 2, 1 - alpha / 2]``, with it."""
        p = {name: self.p_value(name) for name in self.names}
        return {name: v for name, v in p.items() if min(v, 1.0 - v) < alpha / 2}


def predictive_check(
    model: Callable,
    guide: Callable | None,
    x: torch.Tensor,
    *,
    kind: str = "posterior",
    num_draws: int = 100,
    statistics: tuple[Statistic, ...] = STATISTICS,
    image_shape: tuple[int, ...] | None = None,
    num_bins: int = 20,
    num_examples: int = 16,
    max_plate_nesting: int | None = None,
    batch_size: int | None = None,
    progress: bool | str | None = False,
) -> PredictiveCheck:
    """Replicate ``x`` from the model's prior or posterior predictive and compute test statistics.

    Parameters
    ----------
    model, guide : callable
        Pyro programs called as ``model(x)`` and ``guide(x)`` (the guide is not used by the prior
        predictive and may be None there).
    x : Tensor
        The observed data, ``(N, D)``.
    kind : {"posterior", "prior"}
        Where the latents of the replicates come from: the guide q(z|x) or the prior p(z).
    num_draws : int
        Replicates S of each image.
    statistics : tuple of Statistic
        The data's test statistics; the posterior predictive adds ``log_lik``. The default is
        :data:`IMAGE_STATISTICS`, for images; :func:`statistics_for` picks per-feature
        statistics for tabular data (:func:`feature_statistics`).
    image_shape : tuple of int, optional
        The shape of one image, for statistics over neighbouring pixels: without it
        ``total_variation`` runs over consecutive coordinates of the flat data, across the ends
        of an image's rows.
    num_bins : int
        Bins of the pixel-value histogram, over the observed values' range.
    num_examples : int
        Replicates kept to look at (the first draw of the first images).
    batch_size : int, optional
        Images replicated at once (all S draws of each); by default as many as keep
        ``S x rows x D`` within :data:`BLOCK_ELEMENTS`, whatever the free memory, so that the
        same seed gives the same numbers on any machine.
    progress : bool, str or None
        Progress over the blocks of images (:mod:`pyro_vae.progress`).

    Returns
    -------
    PredictiveCheck
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "posterior" and guide is None:
        raise ValueError("the posterior predictive draws its latents from a guide: pass one")
    if num_draws < 1:
        raise ValueError(f"num_draws must be at least 1, got {num_draws}")
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"expected x of shape (N, D) with N >= 1, got {tuple(x.shape)}")
    if max_plate_nesting is None:
        guessed_guide = guide if guide is not None else _no_guide
        max_plate_nesting = guess_max_plate_nesting(model, guessed_guide, x)
    n, d = x.shape
    if batch_size is None:
        batch_size = max(1, BLOCK_ELEMENTS // (num_draws * d))
    lo, hi = x.min().item(), x.max().item()
    if hi <= lo:
        hi = lo + 1.0
    edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
    observed = {s.name: s.fn(x, image_shape).cpu() for s in statistics}
    replicated: dict[str, list[torch.Tensor]] = {s.name: [] for s in statistics}
    if kind == "posterior":
        replicated[LOG_LIK], observed_lik = [], []
    rep_hist = torch.zeros(num_bins, dtype=torch.float64)
    examples = []
    starts = range(0, n, batch_size)
    bar = progress_bar(len(starts), f"{kind} predictive", "block", progress)
    with torch.no_grad(), bar:
        for start in starts:
            rows = x[start : start + batch_size]
            x_rep, lik_rep, lik_obs = _replicate(
                model, guide, rows, kind, num_draws, max_plate_nesting
            )
            for s in statistics:
                replicated[s.name].append(s.fn(x_rep, image_shape).cpu())
            if kind == "posterior":
                replicated[LOG_LIK].append(lik_rep.cpu())
                observed_lik.append(lik_obs.cpu())
            rep_hist += _histogram(x_rep, edges)
            if sum(e.shape[0] for e in examples) < num_examples:
                examples.append(x_rep[0, :num_examples].cpu())
            bar.update()
    replicated_t = {name: torch.cat(parts, dim=1) for name, parts in replicated.items()}
    if kind == "posterior":
        observed[LOG_LIK] = torch.cat(observed_lik, dim=1)
    descriptions = {s.name: s.description for s in statistics}
    if kind == "posterior":
        descriptions[LOG_LIK] = "log p(x | z), the image and its replicate at the same z"
    return PredictiveCheck(
        kind=kind,
        observed=observed,
        replicated=replicated_t,
        descriptions=descriptions,
        discrete=frozenset(s.name for s in statistics if s.discrete),
        pixel_edges=edges,
        observed_pixels=_histogram(x, edges) / x.numel(),
        replicated_pixels=rep_hist / (num_draws * x.numel()),
        examples=torch.cat(examples)[:num_examples],
    )


def u_tail_share(num_draws: int, tail: float) -> float:
    """The share of images whose u-value lies below ``tail`` or above ``1 - tail`` when the
    model is correct (prior predictive, continuous statistic): u = k / S with k uniform on
    0..S. With S = 100 and a tail of 0.025 it is 6 / 101, not 5%."""
    u = torch.arange(num_draws + 1, dtype=torch.float64) / num_draws
    return ((u < tail) | (u > 1 - tail)).double().mean().item()


def _mid_p(replicated: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``1[rep < obs] + 1[rep == obs] / 2``, elementwise."""
    return (replicated < observed).double() + 0.5 * (replicated == observed).double()


def _no_guide(x):  # the prior predictive's stand-in, to find the plates of the model alone
    return None


def _replicate(model, guide, x, kind: str, num_draws: int, max_plate_nesting: int):
    """``num_draws`` replicates of the rows ``x``, ``(S, N, D)``, and for the posterior
    predictive log p(x_rep | z) and log p(x | z), ``(S, N)`` each (else None)."""
    if kind == "prior":
        with pyro.plate(LATENT_DRAWS_PLATE, num_draws, dim=-max_plate_nesting - 1):
            trace = prune_subsample_sites(poutine.trace(poutine.uncondition(model)).get_trace(x))
        name = _observed_site(trace, was_observed=True)
        return _as_data(trace.nodes[name]["value"], x, num_draws), None, None
    model_trace, guide_trace = vectorized_traces(model, guide, num_draws, max_plate_nesting, x)
    name = _observed_site(model_trace)
    site = model_trace.nodes[name]
    fn = site["fn"]
    value = fn.sample()
    plate = data_plate(model_trace, guide_trace)
    lik_rep = _log_prob(name, site, value, max_plate_nesting, plate)
    lik_obs = _log_prob(name, site, site["value"], max_plate_nesting, plate)
    return _as_data(value, x, num_draws), lik_rep, lik_obs.expand_as(lik_rep)


def _observed_site(trace, was_observed: bool = False) -> str:
    def observed(site):
        return site["infer"].get("was_observed") if was_observed else site["is_observed"]

    names = [n for n, s in trace.nodes.items() if s["type"] == "sample" and observed(s)]
    if len(names) != 1:
        raise ValueError(f"a predictive check needs a model with one observed site, found {names}")
    return names[0]


def _as_data(value: torch.Tensor, x: torch.Tensor, num_draws: int) -> torch.Tensor:
    if value.numel() != num_draws * x.numel():
        raise ValueError(
            f"the observed site's replicate has shape {tuple(value.shape)}: expected "
            f"{num_draws} draws of data shaped like x {tuple(x.shape)}"
        )
    return value.reshape(num_draws, *x.shape).to(x.dtype)


def _log_prob(name, site, value, max_plate_nesting: int, plate: str) -> torch.Tensor:
    scored = dict(site, value=value, unscaled_log_prob=site["fn"].log_prob(value))
    return per_datapoint_log_prob(name, scored, max_plate_nesting, plate)


def _histogram(values: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Counts of ``values`` in the bins of ``edges`` (values outside them in the end bins)."""
    v = values.detach().reshape(-1).double().cpu()
    inner = edges[1:-1].contiguous()
    index = torch.bucketize(v, inner, right=True)
    return torch.bincount(index, minlength=edges.numel() - 1).double()
