import sys

from pointsman.sim.cli import main

sys.exit(main(prog="python -m pointsman.sim"))
