"""Figures of a run, drawn with matplotlib's object API (no global pyplot state).

Each function takes plain arrays and returns a ``Figure``; :func:`pyro_vae.jobs.plot` gathers the
arrays from a run directory and saves the figures as PNG.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure

from pyro_vae import arviz_compat
from pyro_vae.infer.sbc import coordinate_name


def image_grid(images: torch.Tensor, shape, nrow: int) -> np.ndarray:
    """Flattened images, clamped to [0, 1], tiled ``nrow`` per row (torchvision's make_grid)."""
    from torchvision.utils import make_grid

    imgs = images.detach().cpu().clamp(0, 1).reshape(-1, 1, *shape)
    return make_grid(imgs, nrow=nrow, padding=1, pad_value=0.5)[0].numpy()


def show_grid(ax, images: torch.Tensor, shape, nrow: int, title: str, fontsize: int = 9) -> None:
    grid = image_grid(images, shape, nrow)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.axis("off")


def samples(means: torch.Tensor, draws: torch.Tensor, shape, title: str) -> Figure:
    """Decoder means and samples from p(x|z), side by side and labelled as such."""
    nrow = max(1, math.ceil(math.sqrt(means.shape[0])))
    fig = Figure(figsize=(10, 5.4), dpi=120)
    axes = fig.subplots(1, 2)
    show_grid(axes[0], means, shape, nrow, "decoder means E[x | z] (not samples)", 10)
    show_grid(axes[1], draws, shape, nrow, "samples x ~ p(x | z)", 10)
    fig.suptitle(title, fontsize=11)
    return fig


def training_curves(
    epochs, train, val, beta, watched=None, watched_k=None, best_epoch=None
) -> Figure:
    """The epochs' objectives; ``watched``: the validation L_K that early stopping or the
    plateau schedule watched (None where none did), drawn with the best epoch ``best_epoch``
    (the checkpoint evaluation uses) marked when it is given."""
    fig = Figure(figsize=(6.5, 4), dpi=120)
    ax = fig.subplots()
    ax.plot(epochs, train, label="train objective (beta-weighted ELBO)")
    ax.plot(epochs, val, label="validation ELBO (beta = 1)")
    points = [(e, v) for e, v in zip(epochs, watched or (), strict=False) if v is not None]
    if points:
        ax.plot(*zip(*points, strict=True), label=f"validation L_{watched_k} (watched)")
    at = dict(points)
    if best_epoch is not None and best_epoch in at:
        ax.axvline(best_epoch, color="0.4", ls="--", lw=1)
        ax.plot([best_epoch], [at[best_epoch]], "k*", ms=9, label=f"best epoch {best_epoch}")
    if any(b != 1.0 for b in beta):
        ax2 = ax.twinx()
        ax2.plot(epochs, beta, color="0.6", ls=":", label="beta")
        ax2.set_ylabel("KL weight beta")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("Training curves")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def reconstructions(originals, recon, shape) -> Figure:
    n = originals.shape[0]
    fig = Figure(figsize=(8, 2.6), dpi=120)
    axes = fig.subplots(2, 1)
    show_grid(axes[0], originals, shape, n, "test images (as scored)")
    show_grid(axes[1], recon, shape, n, "reconstructions E[x | z = E_q[z|x]]")
    fig.tight_layout()
    return fig


def latent_space(means, labels, projected: bool) -> Figure:
    fig = Figure(figsize=(5.5, 5), dpi=120)
    ax = fig.subplots()
    if labels is None:  # one colour (a colormap without values to map warns)
        ax.scatter(means[:, 0], means[:, 1], s=8, alpha=0.8)
    else:
        sc = ax.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=8, alpha=0.8)
        fig.colorbar(sc, ax=ax, label="label")
    what = "first two principal components of E_q[z|x]" if projected else "E_q[z|x]"
    ax.set_xlabel(f"{what}, axis 1")
    ax.set_ylabel(f"{what}, axis 2")
    ax.set_title("Latent space of the test split", fontsize=10)
    fig.tight_layout()
    return fig


def traversals(images, shape, dims, values) -> Figure:
    """Rows: latent dimensions; columns: the value that dimension is set to."""
    fig = Figure(figsize=(1 + 0.7 * len(values), 0.8 + 0.7 * len(dims)), dpi=120)
    ax = fig.subplots()
    ax.imshow(
        image_grid(images, shape, len(values)), cmap="gray", vmin=0, vmax=1, interpolation="nearest"
    )
    h = shape[0] + 1
    ax.set_yticks([h * i + h / 2 for i in range(len(dims))])
    ax.set_yticklabels([coordinate_name("z", d) for d in dims], fontsize=8)
    w = shape[1] + 1
    ax.set_xticks([w * i + w / 2 for i in range(len(values))])
    ax.set_xticklabels([f"{v:+.1f}" for v in values], fontsize=7)
    ax.set_xlabel("value of the dimension (others at 0); decoder means")
    ax.set_title("Latent traversals (most active dimensions)", fontsize=10)
    fig.tight_layout()
    return fig


def bound_vs_k(series: dict[str, dict[str, float]], elbo: float | None = None) -> Figure:
    """L_K against K for one or more runs: ``{label: {"K": mean L_K}}``."""
    fig = Figure(figsize=(5.5, 4), dpi=120)
    ax = fig.subplots()
    for label, bounds in series.items():
        ks = sorted(int(k) for k in bounds)
        ax.plot(ks, [bounds[str(k)] for k in ks], "o-", label=label)
    if elbo is not None:
        ax.axhline(elbo, color="tab:orange", ls="--", label="ELBO")
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples per datapoint)")
    ax.set_ylabel("nats per datapoint")
    ax.set_title("Importance-weighted bound against K (one pass of draws)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def khat(khats: np.ndarray) -> Figure:
    fig = Figure(figsize=(6.5, 4), dpi=120)
    ax = fig.subplots()
    arviz_compat.plot_khat(khats, ax)
    bad = int((khats > arviz_compat.KHAT_THRESHOLD).sum())
    ax.set_title(
        f"Pareto k-hat per datapoint: {bad} of {len(khats)} above "
        f"{arviz_compat.KHAT_THRESHOLD} (unreliable)",
        fontsize=10,
    )
    ax.set_xlabel("datapoint")
    ax.set_ylabel("k-hat of the importance weights")
    fig.tight_layout()
    return fig


def gap_histogram(gaps: np.ndarray) -> Figure:
    fig = Figure(figsize=(5.5, 4), dpi=120)
    ax = fig.subplots()
    bins = max(10, int(math.sqrt(len(gaps))))
    ax.hist(gaps, bins=bins, color="tab:blue", alpha=0.85)
    ax.axvline(gaps.mean(), color="k", ls="--", label=f"mean {gaps.mean():.3f} nats")
    ax.set_xlabel("log p(x) - ELBO per datapoint (nats)")
    ax.set_ylabel("datapoints")
    ax.set_title("Gap between the importance estimate and the ELBO", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _panel_grid(count: int, width: float = 3.2, height: float = 2.6, cols: int = 4):
    cols = min(cols, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width * cols, height * rows), dpi=110)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes[count:]:
        ax.axis("off")
    return fig, axes[:count]


def predictive_checks(
    idata,
    kind: str,
    names: list[str],
    p_values: dict[str, float],
    paired: dict | None = None,
    own: dict | None = None,
    note: str = "",
    unit: str = "image",
) -> Figure:
    """Three rows of panels, one column per statistic: ArviZ's ``plot_ppc`` (the statistic's
    distribution over images, observed against replicated datasets), ``plot_bpv`` with the mean
    (replicated datasets' mean against the observed mean, with the p-value) and ``plot_bpv``'s
    per-image u-values against uniform.

    A statistic in ``paired`` (``name -> (replicated means (S,), observed means (S,),
    u-values (N,))``, a realised discrepancy such as log p(x|z) whose observed value changes
    with each draw) gets its lower two panels drawn here from those paired values, which
    ArviZ's ``plot_bpv`` cannot pair: the histogram of replicated minus observed mean, and of
    the u-values. A statistic in ``own`` (the same three arrays, not paired) gets these two
    panels too, in place of ArviZ's: for a single image, whose integer statistics ArviZ's
    smoothing cannot interpolate. ``note`` is added to the title; ``unit`` names a datapoint
    in the panels' titles (``"image"``, ``"datapoint"``)."""
    paired = paired or {}
    drawn_here = {**(own or {}), **paired}
    cols = len(names)
    fig = Figure(figsize=(3.4 * cols, 8.4), dpi=110)
    axes = np.atleast_2d(fig.subplots(3, cols).reshape(3, cols))
    if all(n in drawn_here for n in names) and idata.observed_data[names[0]].shape[-1] < 2:
        for ax, name in zip(axes[0], names, strict=True):  # one image: no density over images
            rep, obs, _ = (np.asarray(v) for v in drawn_here[name])
            ax.hist(rep, bins=20, color="C0", alpha=0.7, label=f"{kind} predictive")
            ax.axvline(obs.mean(), color="k", label="observed")
            ax.set_yticks([])
    else:
        arviz_compat.plot_ppc(idata, kind, names, axes[0])
    plain = [j for j, n in enumerate(names) if n not in drawn_here]
    if plain:
        chosen = [names[j] for j in plain]
        arviz_compat.plot_bpv(idata, kind, chosen, axes[1, plain], kind="t_stat")
        arviz_compat.plot_bpv(idata, kind, chosen, axes[2, plain], kind="u_value")
    for j, name in enumerate(names):
        if name in drawn_here:
            rep, obs, u = (np.asarray(v) for v in drawn_here[name])
            axes[1, j].hist(rep - obs, bins=20, color="C0", alpha=0.7)
            axes[1, j].axvline(0.0, color="k")
            axes[1, j].set_yticks([])
            axes[2, j].hist(u, bins=20, range=(0, 1), density=True, color="C0", alpha=0.7)
            axes[2, j].axhline(1.0, color="k", linewidth=1)
    for ax in [*axes[0, 1:], *axes[1]]:  # one legend says which curve is which
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    axes[0, 0].legend(fontsize=7)
    for j, name in enumerate(names):
        axes[0, j].set_title(name, fontsize=10)
        if name in paired:
            axes[1, j].set_title(
                f"replicated - observed mean, paired by z: p = {p_values[name]:.3f}", fontsize=8
            )
            axes[2, j].set_title(f"per-{unit} u-values, paired by z", fontsize=9)
        else:
            axes[1, j].set_title(f"mean over {unit}s: p = {p_values[name]:.3f}", fontsize=9)
            axes[2, j].set_title(f"per-{unit} u-values", fontsize=9)
        for ax in axes[:, j]:
            ax.tick_params(labelsize=7)
            ax.set_xlabel("")
    fig.suptitle(f"{kind} predictive checks{note}", fontsize=11)
    fig.tight_layout()
    return fig


def pixel_values(
    edges: np.ndarray, observed: np.ndarray, replicated: np.ndarray, kind: str, what: str = "pixel"
):
    """The share of ``what`` values (pixel, feature) in each bin, observed against replicated."""
    fig = Figure(figsize=(6, 3.6), dpi=120)
    ax = fig.subplots()
    centres, widths = (edges[1:] + edges[:-1]) / 2, np.diff(edges)
    ax.bar(centres, observed, width=widths, alpha=0.5, label="observed", color="k")
    ax.step(edges[1:], replicated, where="pre", label=f"{kind} predictive", color="C0")
    ax.set_yscale("log")
    ax.set_xlabel(f"{what} value")
    ax.set_ylabel(f"share of {what} values")
    ax.legend(fontsize=8)
    ax.set_title(f"{what} values: observed vs {kind} predictive", fontsize=10)
    fig.tight_layout()
    return fig


def replicates(observed: torch.Tensor, replicated: torch.Tensor, shape, kind: str) -> Figure:
    """Observed images beside one replicate of each."""
    nrow = max(1, math.ceil(math.sqrt(observed.shape[0])))
    fig = Figure(figsize=(8, 4.4), dpi=120)
    axes = fig.subplots(1, 2)
    show_grid(axes[0], observed, shape, nrow, "observed images", 10)
    source = "z ~ p(z)" if kind == "prior" else "z ~ q(z | x)"
    show_grid(axes[1], replicated, shape, nrow, f"replicates x ~ p(x | z), {source}", 10)
    return fig


def sbc_ecdf(ranks: dict[str, np.ndarray], num_draws: int, names, verdicts) -> Figure:
    """One panel per latent coordinate: the ECDF difference of the SBC ranks from uniform with
    ArviZ's 95% simultaneous band (:func:`~pyro_vae.arviz_compat.rank_ecdf_band`, what
    ``az.plot_ecdf(difference=True, confidence_bands="optimized")`` draws, computed once for all
    panels), one curve per proposal (``ranks``: label -> ``(N, D)`` fractional ranks); each panel
    titled with the first proposal's verdict."""
    num_simulations = next(iter(ranks.values())).shape[0]
    points, lower, upper = arviz_compat.rank_ecdf_band(num_simulations, num_draws)
    fig, axes = _panel_grid(len(names), width=2.8, height=2.3, cols=6)
    for j, ax in enumerate(axes):
        ax.fill_between(points, lower, upper, step="post", color="C0", alpha=0.15, linewidth=0)
        ax.axhline(0.0, color="k", linewidth=0.5)
        for i, (label, values) in enumerate(ranks.items()):
            ecdf = (values[:, j][None, :] <= points[:, None] + 1e-12).mean(1)
            ax.step(points, ecdf - points, where="post", color=f"C{i}", label=label, linewidth=1)
        ax.set_title(f"{names[j]}: {verdicts[j]}", fontsize=8)
        ax.tick_params(labelsize=6)
    if len(ranks) > 1:
        axes[0].legend(fontsize=6)
    fig.suptitle(
        "SBC: ECDF of the rank of the true latent minus uniform (95% simultaneous band)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
