import sys

from imageclf.client.cli import main

sys.exit(main())
