"""`python -m raft.sim test|replay ...`"""

import sys

from raft.sim.cli import main

sys.exit(main())
