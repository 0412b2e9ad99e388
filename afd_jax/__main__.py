import sys

from afd_jax.cli import main

sys.exit(main())
