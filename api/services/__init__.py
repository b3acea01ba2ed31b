"""The logic behind the routes; typed and generic routes share it, so rules are identical."""
