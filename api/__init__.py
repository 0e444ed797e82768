"""The HTTP layer (Starlette): thin over the engine. Arrives with the HTTP API issue."""
