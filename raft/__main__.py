import sys

from raft.cli import main

sys.exit(main())
