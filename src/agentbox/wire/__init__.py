"""Request and answer bodies by resource, and the value types they carry: free of the ORM, the settings
and the server, so that the client is light.
"""
