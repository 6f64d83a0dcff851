"""``python -m sdk`` runs the shelfedge CLI."""

import sys

from sdk.cli import main

sys.exit(main())
