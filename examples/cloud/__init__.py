"""Reference personal cloud: implements the recipient import contract and keeps what it receives."""
