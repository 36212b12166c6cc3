"""`python -m vlmstress`: the same command line as the `vlmstress` script."""

import sys

from vlmstress.cli import main

sys.exit(main())
