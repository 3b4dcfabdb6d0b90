import sys

from zonemta.cli import main

sys.exit(main())
