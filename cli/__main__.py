"""``python -m cli`` runs the shelfedge command."""

from __future__ import annotations

import sys

from cli import main

sys.exit(main())
