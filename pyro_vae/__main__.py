"""``python -m pyro_vae ...`` (and ``torchrun ... -m pyro_vae train ...``): the command line."""

import sys

from pyro_vae.cli import main

sys.exit(main())
