"""python -m gan_fast.aot"""
import sys

from gan_fast.aot import main

sys.exit(main())
