import sys

from orchestr.cli import main

sys.exit(main())
