"""kvbench's version (read by the environment block of every record and by `kvbench --version`)."""

__version__ = "0.1.0"
