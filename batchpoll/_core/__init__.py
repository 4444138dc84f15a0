"""The pure core: maths and parsing with the clock passed in; no event loop, no sockets."""
