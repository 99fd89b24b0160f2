"""``python -m pyro_vae.cli``: the ``pyro-vae`` command."""

from ..training.distributed import exit_process  # under torchrun: leaves without the process group's C++ teardown
from .entry import main

exit_process(main())
