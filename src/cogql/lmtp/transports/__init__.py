"""Ways to carry LMTP ops to an engine: in-process, websocket, Replicate."""
