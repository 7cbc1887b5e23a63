"""Secrets per owner, stored sealed, for the egress proxy to put into a workspace's requests.

service.py  Vault: store, list, delete, and reveal (the proxy's alone) an owner's secrets; E2B's create,
            update (versions), lookup by identifier or name, and pages

The rules on names and values are in wire/vault.py, shared with the API's bodies. Values are sealed
with github/crypto.py's AES-GCM under the server's GITHUB_APP_ENCRYPTION_KEY, bound to owner and name.
"""

from agentbox.vault.service import SecretExists, SecretInfo, TooManySecrets, UnknownSecret, Unsealable, Vault

__all__ = ["SecretExists", "SecretInfo", "TooManySecrets", "UnknownSecret", "Unsealable", "Vault"]
