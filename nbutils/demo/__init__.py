"""The demo: a generated captioned image set (scenes), a faulty web site serving it (site, fault_server)."""
