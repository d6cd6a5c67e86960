"""Background maintenance: the one runner that rolls up completed minutes and prunes."""
