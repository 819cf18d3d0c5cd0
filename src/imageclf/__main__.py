import sys

from imageclf.cli import main

sys.exit(main())
