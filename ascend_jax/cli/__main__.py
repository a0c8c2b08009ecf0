"""``python -m ascend_jax.cli``: the ``ascend-jax`` command."""

import sys

from ascend_jax.cli import main

sys.exit(main())
