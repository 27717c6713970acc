"""``ligeiro package``: a model folder as a wheel (``wheel``) or one executable file (``pyz``)."""

from __future__ import annotations

from .wheel import Packaged as Packaged
from .wheel import build_wheel as build_wheel

__all__ = ["Packaged", "build_wheel"]
