"""oncocoder: ICD-10-GM and ICD-O-3 coding of short German tumor diagnosis texts."""

import os

# OpenMP threads that spin while waiting make every torch call crawl when another process shares the CPU
# (seen on 2 cores: 0.32 s instead of 0.07 s per retrieval). Passive waiting costs little on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
