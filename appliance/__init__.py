"""Inline network security appliance for VM hosts."""

__version__ = "0.1.0"
