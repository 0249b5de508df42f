"""Stages 01-03: importers, download, validation, captions, splits, the image cache and its Dataset."""
