"""The store process: one single-threaded owner of all data, behind a framed socket protocol."""

__version__ = "0.1.0"
