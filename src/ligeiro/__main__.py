"""``python -m ligeiro`` is the ``ligeiro`` command."""

from .cli import main

main()
