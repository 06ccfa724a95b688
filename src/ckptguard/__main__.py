"""``python -m ckptguard``: the same as the ``ckptguard`` command."""

from .cli import main

main()
