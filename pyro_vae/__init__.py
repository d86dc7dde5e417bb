"""pyro_vae: deep latent-variable models as Pyro programs, with honest log p(x) estimates."""

__version__ = "0.1.0"
__all__ = ["VAE", "__version__", "importance_log_likelihood"]


def __getattr__(name: str):
    """``VAE`` and ``importance_log_likelihood``, imported at first use: importing the package
    (as the command line's entry point does) loads neither torch nor Pyro."""
    if name == "VAE":
        from pyro_vae.models import VAE

        return VAE
    if name == "importance_log_likelihood":
        from pyro_vae.infer import importance_log_likelihood

        return importance_log_likelihood
    raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
