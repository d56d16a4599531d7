import sys

from raft.bench.cli import main

sys.exit(main())
