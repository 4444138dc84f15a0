"""``python -m batchpoll``."""

import sys

from .cli import main

sys.exit(main())
