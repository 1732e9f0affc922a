import sys

from dexport.cli import main

sys.exit(main())
