"""Who may do what: accounts and passwords, sign-in and sessions, API tokens, roles and
access policies."""
