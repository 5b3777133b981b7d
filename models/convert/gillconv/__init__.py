"""Converter from GILL's released checkpoint and its frozen backbones to a gill-bundle/2 (models/README.md)."""
