from .cli import main
from .training.distributed import exit_process  # under torchrun: leaves without the process group's C++ teardown

exit_process(main())
