//! Taskmanager-side replication flows (create, detach, promote, eject) driven over RPC.
