"""How a reply's events travel: SSE (:mod:`.sse`) and WebSocket (:mod:`.ws`) encodings."""
