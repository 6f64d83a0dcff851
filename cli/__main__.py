"""``python -m cli`` runs the shelfedge command."""

import sys

from cli import main

sys.exit(main())
