"""The engine: intake, routing, scheduling, delivery attempts, retries and the event bus."""
