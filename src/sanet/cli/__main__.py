"""``python -m sanet.cli`` (also what ``torchrun ... -m sanet.cli train`` runs)."""

import sys

from sanet.cli import main

sys.exit(main())
