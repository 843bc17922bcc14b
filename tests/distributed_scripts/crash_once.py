"""Dies of SIGSEGV on its first run, then writes `{"runs": 2}` (for the
launcher's own test): `python crash_once.py MARKER OUT.json`."""

import json
import os
import signal
import sys

marker, out_path = sys.argv[1], sys.argv[2]
if not os.path.exists(marker):
    open(marker, "w").close()
    os.kill(os.getpid(), signal.SIGSEGV)
with open(out_path, "w") as f:
    json.dump({"runs": 2}, f)
