"""``python -m ckptguard.cli``"""

from . import main

main()
