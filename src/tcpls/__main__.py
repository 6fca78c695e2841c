"""``python -m tcpls``: the command line interface."""

import sys

from tcpls.cli import main

if __name__ == "__main__":
    sys.exit(main())
