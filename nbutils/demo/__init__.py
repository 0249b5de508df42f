"""The demo: a generated captioned image set (scenes), a faulty web site serving it (website, fault_server)."""
