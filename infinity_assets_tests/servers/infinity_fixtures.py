"""pytest fixtures (filled in by the server tooling)."""
