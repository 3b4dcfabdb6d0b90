"""The SMTP inbound adapter: the listener, one SMTP session, the interfaces' settings and the
intake child process. Like the HTTP API, it hands messages to the engine's intake
(:mod:`zonemta.engine.intake.reception`); nothing below the engine imports it."""
