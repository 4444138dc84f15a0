"""The I/O shell: HTTP, files, Redis, logs and the engine loop, thin around the core."""
