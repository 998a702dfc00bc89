import sys

from dsagent.cli import main

sys.exit(main())
