"""The compiled and the pure-Python frame parser, differentially: server and client cores of
both twins get the same bytes in the same chunks (see checks.check_frames).

Run: python tests/fuzz/fuzz_frames.py [libFuzzer options] [corpus dirs]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _launch import main  # noqa: E402

if __name__ == "__main__":
    main("frames")
