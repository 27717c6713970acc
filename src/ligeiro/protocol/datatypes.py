"""V2 datatype names ↔ numpy dtypes, for the codecs (the table is ``ligeiro.datatypes``)."""

from __future__ import annotations

from ..datatypes import DATATYPES as DATATYPES
from ..datatypes import check_shape as check_shape
from ..datatypes import datatype_of as datatype_of
from ..datatypes import dtype_of as dtype_of
from ..datatypes import fits_without_overflow as fits_without_overflow

__all__ = ["DATATYPES", "check_shape", "datatype_of", "dtype_of", "fits_without_overflow"]
