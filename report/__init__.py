"""Presentation: the report's markdown, tables, figures and the verdict wording, built in memory from the
evaluation's tables. Nothing here computes a score or writes a file (storage/ writes what is built here)."""
