"""pyro_vae: deep latent-variable models as Pyro programs, with honest log p(x) estimates."""

from pyro_vae.infer import importance_log_likelihood
from pyro_vae.models import VAE

__version__ = "0.1.0"
__all__ = ["VAE", "__version__", "importance_log_likelihood"]
