"""Running one execution on the worker: the RQ job, the run's private directory and sandbox,
ansible-runner, the inventory, protocols, SSH host keys and retries."""
