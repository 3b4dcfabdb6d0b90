"""zonemta: an outbound SMTP relay on trio."""

__version__ = "0.1.0"
