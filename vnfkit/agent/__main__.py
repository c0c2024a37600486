"""``python -m vnfkit.agent``: the same as ``vnfkit-agent``."""

import sys

from vnfkit.agent.cli import main

sys.exit(main())
