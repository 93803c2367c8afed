import sys

sys.exit(0)  # "installed": the poisoned environment is kept and marked ready
