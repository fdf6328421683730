"""I/O side of pith-mirror: command line, storage, HTTP and peer sessions (trio)."""
