"""When runs happen: cron as cronie fires it, schedules and blackouts, and the scheduler loop."""
