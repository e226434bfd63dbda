"""A BlueZ stand-in on a private D-Bus system bus for testing bleak's real BlueZ backend."""
