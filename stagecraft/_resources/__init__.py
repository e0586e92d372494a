"""The client's resource groups: `client.datasets`, `client.jobs`, `client.models`."""
