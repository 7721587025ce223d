"""The opening handshake: a server parsing and accepting a request, a client checking a
response for a known key; only InvalidRequest / InvalidResponse may come out (checks.check_handshake).

Run: python tests/fuzz/fuzz_handshake.py [libFuzzer options] [corpus dirs]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _launch import main  # noqa: E402

if __name__ == "__main__":
    main("handshake")
