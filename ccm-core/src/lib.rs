//! The cluster connection manager: sans-IO state machines, clients, link monitor, failover.
