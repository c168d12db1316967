"""What happened: reports and exports, Prometheus metrics and notifications."""
