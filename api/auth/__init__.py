"""Authentication: signed tokens, sessions and their revocation, principals, credentials."""
