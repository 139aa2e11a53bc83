"""Running it as a service: metrics, health, logs, systemd notification."""
