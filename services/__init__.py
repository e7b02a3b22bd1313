"""The broker's three services: registry, consent and transfer. They talk only over NATS."""
