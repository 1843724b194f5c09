import sys

from hetdiff.cli import main

sys.exit(main())
