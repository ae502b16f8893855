"""Streaming readers turning an uploaded file into a header and rows (CSV, XLSX, JSON, NDJSON)."""

from app.pipeline.readers.base import ReadError, Table, check_format, detect_format, open_table

__all__ = ["ReadError", "Table", "check_format", "detect_format", "open_table"]
