"""Common code of the portability broker's services.

Everything the registry, consent and transfer services share lives here: settings,
the database engine, the NATS bus (envelopes, subjects, JetStream streams, trace
context), the outbox relay, error types and their RFC 9457 problem-details form.
"""
