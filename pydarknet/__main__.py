"""``python -m pydarknet ...`` is the ``pydarknet`` command."""

import sys

from pydarknet.cli.main import main

sys.exit(main())
