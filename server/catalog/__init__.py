"""What can be run and where: hosts, credentials, tasks, playbooks and connection tests."""
