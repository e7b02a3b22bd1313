"""Consent service: consent lifecycle, holder tokens, ``consent.check`` and ``consent.token.get``."""
