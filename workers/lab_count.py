"""`python -m workers.lab_count N`: N numbered lines, one every 0.2 s, every
third on stderr; the lab's `spawn` (blueprints/lab.py) streams them as they
come. Flushed at once: a child's pipe is not a terminal, so Python would
otherwise buffer everything until it exits, and nothing would stream."""

import sys
import time

PAUSE = 0.2


def main(argv):
    total = int(argv[1])
    for number in range(1, total + 1):
        if number % 3:
            print(f"line {number} of {total}", flush=True)
        else:
            print(f"line {number} of {total} (on stderr)", file=sys.stderr, flush=True)
        if number < total:
            time.sleep(PAUSE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
