"""``python -m pydarknet ...`` is the ``pydarknet`` command."""
import sys

from .cli import main

sys.exit(main())
