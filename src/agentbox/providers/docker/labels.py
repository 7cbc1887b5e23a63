"""The labels agentbox puts on what it makes on a Docker engine: how it finds its own again."""

#: The workspace a container (or network grant) belongs to.
WORKSPACE_LABEL = "agentbox.workspace.id"
#: The deployment that made it: several may share an engine, and each reconciles only its own.
INSTANCE_LABEL = "agentbox.instance"
#: On a container on the workspace network: its firewall grant as JSON (null: the public internet; else CIDRs).
GRANT_LABEL = "agentbox.network.allow"
