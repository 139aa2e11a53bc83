"""Running commands: a ProcessProtocol per command, the transports that spawn them, tree tracking."""
