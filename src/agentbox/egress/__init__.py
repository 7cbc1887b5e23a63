"""Egress by name: per-workspace policies (rules.py) enforced by a transparent proxy (proxy.py) that the
server runs as a child process (supervisor.py), with headers filled from secrets for chosen domains.

Generic: nothing here knows Docker. A provider sends a policy workspace's TCP to the proxy's port
(Docker: an iptables REDIRECT on the bridge, providers/docker/) and keys its policy by the
workspace's source address.
"""
