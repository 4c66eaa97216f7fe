"""`python -m gateway`: the same command as `llmp gateway`."""

import sys

from gateway.cli import main

sys.exit(main())
