import sys

from maskrcnn_tfx.cli import main

sys.exit(main())
