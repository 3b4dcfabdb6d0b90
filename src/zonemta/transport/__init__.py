"""Transports: sans-IO SMTP protocol objects (``transport.smtp``) and their trio drivers."""
