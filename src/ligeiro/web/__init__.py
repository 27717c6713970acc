"""The pages for people: the dashboard at ``/``, Swagger UI at ``/docs``, ``/openapi.json``."""

from __future__ import annotations

from .site import Page as Page
from .site import Site as Site

__all__ = ["Page", "Site"]
