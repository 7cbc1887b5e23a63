"""An E2B-compatible endpoint: code written for E2B's SDK runs on agentbox with its variables changed."""
