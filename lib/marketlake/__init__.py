"""marketlake: PySpark jobs that turn an online shop's behaviour events into Delta tables."""

__version__ = "0.1.0"
