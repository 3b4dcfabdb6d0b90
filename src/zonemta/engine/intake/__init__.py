"""Taking messages in: the reception of one message (header block kept, body streamed to the
store), routing to zones, and submission authentication. The one submission interface that
the SMTP sessions (:mod:`zonemta.inbound`) and the HTTP API (:mod:`zonemta.http`) call."""
