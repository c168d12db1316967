"""What every other package stands on: settings, the database and its models, errors, input
validation, paging, the vault, the Redis connection and the tamper-evident audit log."""
