"""``python -m mmjax.report RUN_DIR [RUN_DIR ...] --out REPORT_DIR``."""

import sys

from mmjax.report.cli import main

if __name__ == '__main__':
  sys.exit(main())
