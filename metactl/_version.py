"""The package version: a leaf module (imports nothing), so any module may import it without the package root."""

__version__ = "0.1.0"
