import sys

from natsgw.cli import main

sys.exit(main())
