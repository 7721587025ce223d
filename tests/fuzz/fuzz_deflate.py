"""permessage-deflate negotiation: fuzzed offers to the server, fuzzed answers to the client,
and fastws client/server pairs with fuzzed settings (checks.check_deflate).

Run: python tests/fuzz/fuzz_deflate.py [libFuzzer options] [corpus dirs]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _launch import main  # noqa: E402

if __name__ == "__main__":
    main("deflate")
