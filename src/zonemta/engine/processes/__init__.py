"""Child processes: the supervisor, the framed pipe, the delivery processes (both halves) and
the relay's half of the intake processes."""
