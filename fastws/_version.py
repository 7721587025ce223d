"""The version, in a module of its own: setuptools reads it, and the modules that
name it (client, server, cli) import it without importing the package first."""

__version__ = "0.1.0"
