"""Reference participants: a data holder and a personal cloud that implement the broker's contracts."""
