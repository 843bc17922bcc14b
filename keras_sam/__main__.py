"""`python -m keras_sam`: the same as the `keras-sam` command."""

import sys

from keras_sam.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
