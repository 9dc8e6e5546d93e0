"""sepcli: music source separation from the command line."""

__version__ = "0.1.0"
