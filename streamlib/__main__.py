"""``python -m streamlib``: the ``streamlib`` command (:mod:`streamlib.cli`)."""

import sys

from streamlib.cli import main

sys.exit(main())
