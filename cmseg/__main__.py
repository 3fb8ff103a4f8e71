"""`python -m cmseg ...` runs the `cmseg` command line."""

import sys

from cmseg._deps import main

if __name__ == "__main__":
    sys.exit(main())
