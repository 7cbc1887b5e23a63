"""The composition root: settings into a running service (service), and the one ASGI app that mounts
every face over it (app).
"""
