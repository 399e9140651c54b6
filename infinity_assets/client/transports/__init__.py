"""httpx transports of the client: the choice per URL scheme (``default``) and the plain-HTTP receiver (``http11``)."""
