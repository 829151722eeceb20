import sys

from adrenaline_sgl.tools.chaos.run import main

sys.exit(main())
