"""Generative models and guides: the VAE and its swappable pieces."""

from pyro_vae.models.guides import (
    DiagonalNormalEncoder,
    Encoder,
    FullCovarianceEncoder,
    IAFEncoder,
    LowRankEncoder,
)
from pyro_vae.models.likelihoods import (
    BernoulliLikelihood,
    BetaLikelihood,
    ContinuousBernoulliLikelihood,
    DiscretizedLogisticLikelihood,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    LearnedLaplaceLikelihood,
    Likelihood,
    LocationScale,
    Support,
)
from pyro_vae.models.nets import (
    MLP,
    ConvDecoderNet,
    ConvEncoderNet,
    ConvNetworks,
    MLPNetworks,
    Networks,
)
from pyro_vae.models.ppca import ProbabilisticPCA, TwoLevelPPCA
from pyro_vae.models.precision import networks_in
from pyro_vae.models.priors import (
    FlowPrior,
    MixtureOfGaussians,
    Prior,
    StandardNormal,
    StudentT,
    VampPrior,
)
from pyro_vae.models.vae import VAE, Generated, TwoLayerVAE

__all__ = [
    "StudentT",
    "Networks",
    "MLPNetworks",
    "ConvNetworks",
    "ConvEncoderNet",
    "ConvDecoderNet",
    "BernoulliLikelihood",
    "BetaLikelihood",
    "ContinuousBernoulliLikelihood",
    "DiagonalNormalEncoder",
    "DiscretizedLogisticLikelihood",
    "Encoder",
    "FlowPrior",
    "FullCovarianceEncoder",
    "GaussianLikelihood",
    "Generated",
    "IAFEncoder",
    "LearnedGaussianLikelihood",
    "LearnedLaplaceLikelihood",
    "Likelihood",
    "LocationScale",
    "LowRankEncoder",
    "MLP",
    "MixtureOfGaussians",
    "Prior",
    "ProbabilisticPCA",
    "TwoLayerVAE",
    "TwoLevelPPCA",
    "StandardNormal",
    "Support",
    "VAE",
    "VampPrior",
    "networks_in",
]
