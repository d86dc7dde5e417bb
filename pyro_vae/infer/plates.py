"""Where a Pyro model/guide pair keeps its datapoints: the plate over them, found by structure,
and the plates of draws the estimators add (never the plate over datapoints)."""

from __future__ import annotations

DATA_PLATE = "data"  # the plate over datapoints when several plates hold every site

PARTICLE_PLATE = "_importance_particles"

LATENT_DRAWS_PLATE = "_latent_draws"  # infer.latent's

# Plates of draws, not of data, left of all others: never the plate over datapoints.
DRAW_PLATES = frozenset({PARTICLE_PLATE, LATENT_DRAWS_PLATE, "num_particles_vectorized"})


def plate_nesting(*traces) -> int:
    """The depth of the vectorised plates that the sample sites of ``traces`` sit in."""
    nesting = 0
    for trace in traces:
        for site in trace.nodes.values():
            if site["type"] == "sample":
                dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized]
                nesting = max([nesting, *dims])
    return nesting


def data_plate(*traces) -> str:
    """The name of the plate over datapoints in ``traces``, found by structure: the vectorised
    plate that every sample site sits in (the estimators' own particle plate aside), as NumPyro's
    RenyiELBO finds the plates common to all sites. Where several plates hold every site (a
    pixel plate inside the data plate of a model with one site), the one named
    :data:`DATA_PLATE`.

    Auxiliary sites (named ``_...`` or marked ``infer={"is_auxiliary": True}``, which the
    estimators that draw their own latents ignore) do not decide the plate; an estimator that
    scores one outside it refuses it when it does (:func:`per_datapoint_log_prob`).

    Raises ValueError, naming a site, when no plate holds every site (a latent shared by all
    datapoints has no per-datapoint density), and when several do and none is named "data".
    """
    plates: dict[str, set[str]] = {}
    for trace in traces:
        for name, site in trace.nodes.items():
            auxiliary = name.startswith("_") or site.get("infer", {}).get("is_auxiliary", False)
            if site["type"] == "sample" and not auxiliary:
                frames = {
                    f.name
                    for f in site["cond_indep_stack"]
                    if f.vectorized and f.name not in DRAW_PLATES
                }
                plates[name] = plates.get(name, frames) & frames
    if not plates:
        raise ValueError("the model and guide have no sample sites")
    common = set.intersection(*plates.values())
    if len(common) == 1:
        return common.pop()
    if DATA_PLATE in common:
        return DATA_PLATE
    if common:
        raise ValueError(
            f"every sample site lies in each of the plates {sorted(common)}: name the plate over "
            f"datapoints '{DATA_PLATE}' (pyro.plate('{DATA_PLATE}', N))"
        )
    counts: dict[str, int] = {}
    for frames in plates.values():
        for f in frames:
            counts[f] = counts.get(f, 0) + 1
    shared = max(counts, key=lambda f: (counts[f], f == DATA_PLATE)) if counts else DATA_PLATE
    outside = next(name for name, frames in plates.items() if shared not in frames)
    raise ValueError(
        f"sample site '{outside}' is outside pyro.plate('{shared}'), the plate over datapoints "
        "of the other sites: a per-datapoint log p(x) needs every latent and observed site to "
        "belong to one datapoint"
    )


def data_frame(name: str, site: dict, plate: str):
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            return frame
    raise ValueError(
        f"sample site '{name}' is outside pyro.plate('{plate}'): a per-datapoint "
        "log p(x) needs every latent and observed site to belong to one datapoint"
    )
