import sys

from nasframe.cli import main

sys.exit(main())
