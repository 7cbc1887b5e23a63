"""The core: workspaces' lifecycle and admission (manager), the warm pool, reconciliation and the
background loops, replicas' lease, shell sessions, file tools, usage and the audit trail. It knows
providers, not HTTP.
"""
