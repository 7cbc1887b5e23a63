"""GitHub Apps: credentials encrypted at rest, installation tokens, repositories in and out of workspaces."""
