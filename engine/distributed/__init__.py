"""Beyond one machine: the spool on NATS JetStream, stateless workers, shared rate limits."""
